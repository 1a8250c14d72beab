"""A client of the Janus API over its WebSocket transport: one connection, one Janus session, handles.

Janus answers a request with `success` or `error` (synchronous plugin requests carry their result in
`plugindata`), or with `ack` followed later by an `event` carrying the same transaction (asynchronous
plugin requests such as VideoRoom's join, publish, start). Everything else Janus sends is addressed
to a handle (`sender`): plugin events, `webrtcup`, `hangup`, `detached`, `trickle`, ...; a handle
hands those to its `on_event` callback. The session is kept alive with a keepalive well inside
Janus's session timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

PROTOCOL = "janus-protocol"
KEEPALIVE_S = 20.0  # Janus drops a session after 60 s without a request
REQUEST_TIMEOUT_S = 10.0
Json = dict[str, Any]
EventCallback = Callable[["Handle", Json], None]


class JanusError(Exception):
    """Janus (or one of its plugins) refused a request; `code` is Janus's error code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"Janus error {code}: {reason}")
        self.code = code
        self.reason = reason


class JanusClosed(ConnectionError):
    """The connection to Janus is gone: every handle of this session is gone with it."""


class Handle:
    """A plugin handle: what a peer connection and its plugin state hang on in Janus."""

    def __init__(self, client: JanusClient, handle_id: int) -> None:
        self.client = client
        self.id = handle_id
        self.on_event: EventCallback = lambda handle, event: None

    async def message(self, body: Json, jsep: Json | None = None) -> tuple[Json, Json | None]:
        """Send a plugin request; returns the plugin's data and its JSEP (an offer or answer), if any.
        A plugin-level error (VideoRoom's `error_code`) is raised as JanusError."""
        payload: Json = {"janus": "message", "handle_id": self.id, "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        reply = await self.client.request(payload)
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data:
            raise JanusError(int(data["error_code"]), str(data.get("error", "")))
        return data, reply.get("jsep")

    async def detach(self) -> None:
        self.client.handles.pop(self.id, None)
        with contextlib.suppress(JanusError, JanusClosed, TimeoutError):
            await self.client.request({"janus": "detach", "handle_id": self.id})


class JanusClient:
    def __init__(self, url: str, api_secret: str) -> None:
        self.url = url
        self.api_secret = api_secret
        self.session_id = 0
        self.handles: dict[int, Handle] = {}
        self.closed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, tuple[asyncio.Future[Json], bool]] = {}  # transaction -> (answer, ack is final)
        self._transactions = (f"g{n}" for n in itertools.count())
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and not self.closed.is_set()

    async def connect(self) -> None:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.url, protocols=(PROTOCOL,), heartbeat=KEEPALIVE_S)
        except (aiohttp.ClientError, OSError) as exc:
            await self._http.close()
            raise JanusClosed(f"cannot reach Janus at {self.url}: {exc}") from exc
        self._tasks.append(asyncio.create_task(self._read()))
        reply = await self.request({"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks.append(asyncio.create_task(self._keepalive()))

    async def close(self) -> None:
        if self.session_id and self.connected:
            with contextlib.suppress(JanusError, JanusClosed, TimeoutError):
                await self.request({"janus": "destroy"})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._fail_pending()

    async def attach(self, plugin: str) -> Handle:
        reply = await self.request({"janus": "attach", "plugin": plugin})
        handle = Handle(self, int(reply["data"]["id"]))
        self.handles[handle.id] = handle
        return handle

    async def request(self, payload: Json, timeout_s: float = REQUEST_TIMEOUT_S) -> Json:
        """Send one request and wait for its final answer: the event after an `ack`, except for
        keepalives and trickles, which Janus answers with the `ack` alone."""
        if not self.connected or self._ws is None:
            raise JanusClosed("not connected to Janus")
        transaction = next(self._transactions)
        message = {**payload, "transaction": transaction, "apisecret": self.api_secret}
        if self.session_id and payload["janus"] != "create":
            message["session_id"] = self.session_id
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = (future, payload["janus"] in ("keepalive", "trickle"))
        try:
            await self._ws.send_json(message)
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(int(error.get("code", 0)), str(error.get("reason", "")))
        return reply

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(frame.json())
        finally:
            self.closed.set()
            self._fail_pending()
            log.warning("connection to Janus closed")

    def _dispatch(self, message: Json) -> None:
        future, ack_is_final = self._pending.get(str(message.get("transaction", "")), (None, False))
        if future is not None and (ack_is_final or message.get("janus") != "ack") and not future.done():
            future.set_result(message)
            return
        handle = self.handles.get(int(message.get("sender") or 0))
        if handle is not None and message.get("janus") != "ack":
            try:
                handle.on_event(handle, message)
            except Exception:  # one handle's bug must not stop the reader every handle depends on
                log.exception("error handling a Janus event for handle %s", handle.id)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(JanusError, TimeoutError):
                await self.request({"janus": "keepalive"})

    def _fail_pending(self) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(JanusClosed("the connection to Janus closed"))
