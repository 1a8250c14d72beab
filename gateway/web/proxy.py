"""The filtering proxy between a browser's janus.js and Janus: the only door from a browser to Janus.

Why a proxy rather than Janus's own tokens or room pins alone: a stored Janus token grants a plugin,
not a room, and a pin handed to a browser would let it into the room under any id and let it list
the room's participants. The proxy sees every request a participant makes, so it scopes each one to
that participant's own room and own feed, adds the room's pin and the API secret (the browser never
learns either), and refuses everything else with a Janus-style 403 that janus.js reports as an
error. Janus's API listens on loopback and demands the API secret, so there is no way around it.

Allowed: creating, keeping alive and destroying one's own Janus session; attaching to the VideoRoom
plugin; trickle, hangup and detach on one's own handles; and these VideoRoom requests:
- `join` as a publisher: the participant's own room, id and display name (whatever the browser says);
- `join` as a subscriber, `update`: streams of feeds in the participant's own room only;
- `publish`, `configure`, `unpublish`, `start`, `pause`, `leave`, with no recording options.
Refused: creating, editing, destroying or listing rooms, listing participants, kicking, moderation,
RTP forwarding, recording, playing files, and any field this list does not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.media.janus import PROTOCOL, Json
from gateway.validation import InvalidInput, json_object

log = logging.getLogger(__name__)

PLUGIN = "janus.plugin.videoroom"
MAX_FRAME_BYTES = 256 * 1024  # an SDP with a dozen media sections is a few KB
# A page needs one Janus session, a publisher handle and a subscriber handle per feed it watches.
MAX_SESSIONS = 2
MAX_HANDLES = 64
SESSION_REQUESTS = {"create", "destroy", "keepalive", "attach", "detach", "hangup", "trickle", "message"}
STREAM_KEYS = {"feed", "mid", "crossrefid"}
# Fields each allowed VideoRoom request may carry (beyond those the proxy sets itself).
PLUGIN_FIELDS: dict[str, set[str]] = {
    "join": {"request", "ptype", "room", "id", "display", "streams", "use_msid", "autoupdate"},
    "publish": {"request", "audio", "video", "data", "bitrate", "keyframe", "streams", "descriptions"},
    "configure": {"request", "audio", "video", "data", "bitrate", "keyframe", "streams", "descriptions", "restart"},
    "unpublish": {"request"},
    "start": {"request"},
    "pause": {"request"},
    "leave": {"request"},
    "update": {"request", "subscribe", "unsubscribe"},
}
STREAM_FIELDS = {
    "mid",
    "send",
    "keyframe",
    "description",
    "substream",
    "temporal",
    "fallback",
    "min_delay",
    "max_delay",
}


class Refused(Exception):
    """A request this participant may not make; the message goes back to the browser."""


@dataclass
class Grant:
    """What one participant may do in Janus."""

    room_id: int
    pin: str
    feed_id: int
    display: str
    feeds: Callable[[], set[int]]  # feed ids in the participant's room now


@dataclass
class Vetting:
    """Per-connection bookkeeping: the sessions and handles this browser created, and what it asked."""

    grant: Grant
    sessions: set[int] = field(default_factory=set)
    handles: set[int] = field(default_factory=set)
    published: bool = False  # joined as the publisher already (one per connection)
    asked: dict[str, str] = field(default_factory=dict)  # transaction -> "create"/"attach", until answered

    def vet(self, request: Any) -> Json:
        """The request as it goes to Janus, or Refused."""
        if not isinstance(request, dict):
            raise Refused("a Janus request is a JSON object")
        kind = request.get("janus")
        if kind not in SESSION_REQUESTS:
            raise Refused(f"request {kind!r} is not allowed")
        transaction = request.get("transaction")
        if not isinstance(transaction, str) or not 0 < len(transaction) <= 64:
            raise Refused("a request needs a transaction string")
        out: Json = {"janus": kind, "transaction": transaction}
        self._within_limits(kind)
        if kind != "create":
            out["session_id"] = self._own(request.get("session_id"), self.sessions, "session")
        if kind in ("detach", "hangup", "trickle", "message"):
            out["handle_id"] = self._own(request.get("handle_id"), self.handles, "handle")
        if kind == "attach":
            if request.get("plugin") != PLUGIN:
                raise Refused(f"only the {PLUGIN} plugin may be attached")
            out["plugin"] = PLUGIN
            if isinstance(request.get("opaque_id"), str):
                out["opaque_id"] = request["opaque_id"][:64]
        elif kind == "trickle":
            out.update({k: request[k] for k in ("candidate", "candidates") if k in request})
        elif kind == "message":
            out["body"] = self._vet_body(request.get("body"))
            if isinstance(request.get("jsep"), dict):
                out["jsep"] = _vet_jsep(request["jsep"])
        if kind in ("create", "attach"):
            self.asked[transaction] = kind
        return out

    def observe(self, reply: Json) -> None:
        """Learn the session and handle ids Janus hands out in answer to this browser's requests."""
        kind = self.asked.pop(str(reply.get("transaction", "")), None)
        if reply.get("janus") == "success" and kind is not None:
            new_id = reply.get("data", {}).get("id")
            if isinstance(new_id, int):
                (self.sessions if kind == "create" else self.handles).add(new_id)

    def _within_limits(self, kind: str) -> None:
        asking = sum(1 for k in self.asked.values() if k == kind)
        if kind == "create" and len(self.sessions) + asking >= MAX_SESSIONS:
            raise Refused(f"at most {MAX_SESSIONS} Janus sessions per connection")
        if kind == "attach" and len(self.handles) + asking >= MAX_HANDLES:
            raise Refused(f"at most {MAX_HANDLES} handles per connection")

    def _vet_body(self, body: Any) -> Json:
        if not isinstance(body, dict):
            raise Refused("a plugin message needs a body object")
        request = body.get("request")
        allowed = PLUGIN_FIELDS.get(request) if isinstance(request, str) else None
        if allowed is None:
            raise Refused(f"VideoRoom request {request!r} is not allowed")
        extra = set(body) - allowed
        if extra:
            raise Refused(f"field(s) {sorted(extra)} are not allowed in {request!r}")
        out = dict(body)
        if request == "join":
            return self._vet_join(out)
        if request in ("publish", "configure") and "streams" in out:
            out["streams"] = _vet_list(out["streams"], STREAM_FIELDS, "streams")
        if request == "update":
            for key in ("subscribe", "unsubscribe"):
                if key in out:
                    out[key] = self._vet_streams(out[key])
        return out

    def _vet_join(self, body: Json) -> Json:
        grant = self.grant
        if body.get("room", grant.room_id) != grant.room_id:
            raise Refused("you may only join your own room")
        if body.get("ptype") == "publisher":
            if self.published:
                raise Refused("this connection has joined as a publisher already")
            if body.get("id", grant.feed_id) != grant.feed_id:
                raise Refused("you may only publish as yourself")
            self.published = True
            return {"request": "join", "ptype": "publisher", "room": grant.room_id, "pin": grant.pin,
                    "id": grant.feed_id, "display": grant.display}  # fmt: skip
        if body.get("ptype") == "subscriber":
            out = {"request": "join", "ptype": "subscriber", "room": grant.room_id, "pin": grant.pin}
            out["streams"] = self._vet_streams(body.get("streams"))
            for key in ("use_msid", "autoupdate"):
                if isinstance(body.get(key), bool):
                    out[key] = body[key]
            return out
        raise Refused("join as a 'publisher' or a 'subscriber'")

    def _vet_streams(self, streams: Any) -> list[Json]:
        checked = _vet_list(streams, STREAM_KEYS, "streams")
        feeds = self.grant.feeds()
        for stream in checked:
            if stream.get("feed") not in feeds:
                raise Refused(f"feed {stream.get('feed')!r} is not in your room")
        return checked

    @staticmethod
    def _own(value: Any, known: set[int], what: str) -> int:
        if not isinstance(value, int) or value not in known:
            raise Refused(f"not your {what}")
        return value


def _vet_list(items: Any, keys: set[str], name: str) -> list[Json]:
    if not isinstance(items, list) or not 0 < len(items) <= 64:
        raise Refused(f"{name} must be a list of 1 to 64 objects")
    for item in items:
        if not isinstance(item, dict) or set(item) - keys:
            raise Refused(f"{name}: each entry is an object with only {sorted(keys)}")
    return [dict(item) for item in items]


def _vet_jsep(jsep: Json) -> Json:
    if jsep.get("type") not in ("offer", "answer") or not isinstance(jsep.get("sdp"), str):
        raise Refused("jsep must be an offer or an answer with an sdp")
    out: Json = {"type": jsep["type"], "sdp": jsep["sdp"]}
    if isinstance(jsep.get("trickle"), bool):
        out["trickle"] = jsep["trickle"]
    return out


def refusal(request: Any, reason: str) -> Json:
    transaction = request.get("transaction") if isinstance(request, dict) else None
    return {"janus": "error", "transaction": transaction, "error": {"code": 403, "reason": f"BabelRoom: {reason}"}}


async def relay(
    browser: web.WebSocketResponse,
    upstream_url: str,
    api_secret: str,
    grant: Grant,
    on_media_up: Callable[[], None],
) -> None:
    """Carry one browser's Janus session until either side closes; refused requests never reach Janus."""
    vetting = Vetting(grant)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(upstream_url, protocols=(PROTOCOL,), max_msg_size=MAX_FRAME_BYTES) as janus,
    ):
        downstream = asyncio.create_task(_janus_to_browser(janus, browser, vetting, on_media_up))
        try:
            await _browser_to_janus(browser, janus, vetting, api_secret)
        finally:
            downstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await downstream


async def _browser_to_janus(
    browser: web.WebSocketResponse, janus: aiohttp.ClientWebSocketResponse, vetting: Vetting, api_secret: str
) -> None:
    async for frame in browser:
        if frame.type is aiohttp.WSMsgType.BINARY:
            await browser.send_json(refusal(None, "a Janus request is a JSON text frame, not binary"))
            continue
        if frame.type is not aiohttp.WSMsgType.TEXT:
            continue
        try:  # strict and depth-limited: Python's parser would recurse until RecursionError on deep nesting
            request = json_object(frame.data.encode())
        except InvalidInput as exc:
            await browser.send_json(refusal(None, str(exc)))
            continue
        try:
            vetted = vetting.vet(request)
        except Refused as exc:
            log.warning("refused a Janus request from a browser: %s", exc)
            await browser.send_json(refusal(request, str(exc)))
            continue
        if janus.closed:
            return
        await janus.send_json({**vetted, "apisecret": api_secret})


async def _janus_to_browser(
    janus: aiohttp.ClientWebSocketResponse,
    browser: web.WebSocketResponse,
    vetting: Vetting,
    on_media_up: Callable[[], None],
) -> None:
    async for frame in janus:
        if frame.type is not aiohttp.WSMsgType.TEXT:
            continue
        reply = frame.json()
        vetting.observe(reply)
        if reply.get("janus") == "webrtcup":
            on_media_up()
        if browser.closed:
            return
        await browser.send_str(frame.data)
    await browser.close(message=b"the media server closed the connection")  # the page notices and rejoins
