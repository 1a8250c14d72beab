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

Every field the proxy reads or passes on is checked by type first (REQUEST_FIELDS, PLUGIN_FIELDS): a wrong
type is refused with a 403 that names the field, never an error of the proxy's own.

Limits count per participant, across all of their media sockets (ProxyLimits, gateway/options.py): sockets
(refused with a 429 before the upgrade), Janus sessions, handles and requests awaiting Janus's answer. A
transaction id already awaiting an answer on the same socket is refused: Janus answers by transaction.

Access ends with participation: every relay waits on the participant's `Access` (gateway/rooms/room.py). When
it ends (they left, were removed, the meeting or their token ended), the browser's socket closes with the
participation's close code, and each Janus session made through it is destroyed, which hangs up and detaches
all of its handles, before the connection to Janus closes. A request still on its way is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.media.janus import PROTOCOL, Json
from gateway.options import ProxyLimits
from gateway.rooms.commands import shown
from gateway.rooms.room import Access, close_reason
from gateway.validation import InvalidInput, json_object

log = logging.getLogger(__name__)

PLUGIN = "janus.plugin.videoroom"
MAX_FRAME_BYTES = 256 * 1024  # an SDP with a dozen media sections is a few KB
MAX_ITEMS = 64  # entries in a list of streams or candidates
MAX_TRANSACTION_CHARS = 64
PENDING_FORGET_S = 30.0  # a request Janus has not answered by then no longer counts against the limit
GOODBYE_S = 1.0  # how long Janus is given to confirm the sessions destroyed when access ends
SESSION_REQUESTS = {"create", "destroy", "keepalive", "attach", "detach", "hangup", "trickle", "message"}
ACK_IS_FINAL = {"keepalive", "trickle"}  # Janus answers these with an ack alone; a plugin message with an event


@dataclass(frozen=True)
class Obj:
    """A JSON object with only these fields, each of its rule."""

    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Objs:
    """A list of 1 to MAX_ITEMS JSON objects, each with only these fields, each of its rule."""

    fields: Mapping[str, Any]


# Rules: str, int (never a bool), bool, dict (an object checked further on), Obj, Objs.
JSEP_FIELDS = {"type": str, "sdp": str, "trickle": bool, "e2ee": bool, "rid_order": str, "force_relay": bool}
CANDIDATE_FIELDS = {"candidate": str, "sdpMid": str, "sdpMLineIndex": int, "completed": bool}
REQUEST_FIELDS: dict[str, Any] = {
    "janus": str,
    "transaction": str,
    "session_id": int,
    "handle_id": int,
    "plugin": str,
    "opaque_id": str,
    "body": dict,
    "jsep": Obj(JSEP_FIELDS),
    "candidate": Obj(CANDIDATE_FIELDS),
    "candidates": Objs(CANDIDATE_FIELDS),
}
SUBSCRIBED_STREAM = Objs({"feed": int, "mid": str, "crossrefid": str})
PUBLISHED_STREAM = Objs(
    {
        "mid": str,
        "send": bool,
        "keyframe": bool,
        "description": str,
        "substream": int,
        "temporal": int,
        "fallback": int,
        "min_delay": int,
        "max_delay": int,
    }
)
DESCRIPTIONS = Objs({"mid": str, "description": str})
MEDIA_FIELDS = {"audio": bool, "video": bool, "data": bool, "bitrate": int, "keyframe": bool}
# The fields each allowed VideoRoom request may carry (beyond those the proxy sets itself), and their rules.
PLUGIN_FIELDS: dict[str, dict[str, Any]] = {
    "join": {
        "request": str,
        "ptype": str,
        "room": int,
        "id": int,
        "display": str,
        "streams": SUBSCRIBED_STREAM,
        "use_msid": bool,
        "autoupdate": bool,
    },
    "publish": {"request": str, **MEDIA_FIELDS, "streams": PUBLISHED_STREAM, "descriptions": DESCRIPTIONS},
    "configure": {
        "request": str,
        **MEDIA_FIELDS,
        "streams": PUBLISHED_STREAM,
        "descriptions": DESCRIPTIONS,
        "restart": bool,
    },
    "unpublish": {"request": str},
    "start": {"request": str},
    "pause": {"request": str},
    "leave": {"request": str},
    "update": {"request": str, "subscribe": SUBSCRIBED_STREAM, "unsubscribe": SUBSCRIBED_STREAM},
}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


class Refused(Exception):
    """A request this participant may not make; the message goes back to the browser."""


def checked(value: Any, rule: Any, name: str) -> Any:
    """`value` if it follows `rule`; Refused, naming the field, if not."""
    if isinstance(rule, Obj):
        return _checked_object(value, rule.fields, name)
    if isinstance(rule, Objs):
        if not isinstance(value, list) or not 0 < len(value) <= MAX_ITEMS:
            raise Refused(f"field {name!r} must be a list of 1 to {MAX_ITEMS} objects")
        return [_checked_object(item, rule.fields, f"{name}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, rule) or (rule is int and isinstance(value, bool)):
        raise Refused(f"field {name!r} must be {TYPE_NAMES[rule]}")
    return value


def _checked_object(value: Any, fields: Mapping[str, Any], name: str) -> Json:
    if not isinstance(value, dict):
        raise Refused(f"field {name!r} must be an object")
    extra = sorted(set(value) - set(fields))
    if extra:
        raise Refused(f"field {name!r} may hold only {sorted(fields)}, not {shown(extra[0])}")
    return {key: checked(item, fields[key], f"{name}.{key}") for key, item in value.items()}


@dataclass
class Grant:
    """What one participant may do in Janus, while their access lasts."""

    room_id: int
    pin: str
    feed_id: int
    display: str
    feeds: Callable[[], set[int]]  # feed ids in the participant's room now
    access: Access = field(default_factory=Access)


@dataclass
class Pending:
    kind: str
    target: int  # the handle a request names, else its session
    since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Vetting:
    """One media socket's bookkeeping: the sessions and handles made through it, its requests awaiting an
    answer; and the participant's Allowance, which counts them against the limits across all their sockets."""

    grant: Grant
    allowance: Allowance = field(default_factory=lambda: Allowance(ProxyLimits()))
    sessions: set[int] = field(default_factory=set)
    handles: dict[int, int] = field(default_factory=dict)  # handle -> its session
    published: bool = False  # joined as the publisher already (one per connection)
    publisher_handle: int | None = None  # the handle that joined as the publisher
    pending: dict[str, Pending] = field(default_factory=dict)  # transaction -> what it asked

    def __post_init__(self) -> None:
        self.allowance.connections.append(self)

    def vet(self, request: Any) -> Json:
        """The request as it goes to Janus, or Refused."""
        if not isinstance(request, dict):
            raise Refused("a Janus request is a JSON object")
        fields = {key: checked(request[key], rule, key) for key, rule in REQUEST_FIELDS.items() if key in request}
        kind = fields.get("janus")
        if kind not in SESSION_REQUESTS:
            raise Refused(f"request {shown(kind)} is not allowed")
        if not self.grant.access.open:
            raise Refused(f"you are no longer in the meeting ({self.grant.access.reason})")
        transaction = fields.get("transaction", "")
        if not 0 < len(transaction) <= MAX_TRANSACTION_CHARS:
            raise Refused(f"a request needs a transaction string of 1 to {MAX_TRANSACTION_CHARS} characters")
        if transaction in self.pending:
            raise Refused(f"transaction {transaction!r} is still awaiting Janus's answer")
        self._within_limits(kind)
        out: Json = {"janus": kind, "transaction": transaction}
        if kind != "create":
            out["session_id"] = self._own(fields.get("session_id"), self.sessions, "session")
        if kind in ("detach", "hangup", "trickle", "message"):
            out["handle_id"] = self._own(fields.get("handle_id"), set(self.handles), "handle")
            if self.handles[out["handle_id"]] != out["session_id"]:
                raise Refused("that handle is not of that session")
        if kind == "attach":
            if fields.get("plugin") != PLUGIN:
                raise Refused(f"only the {PLUGIN} plugin may be attached")
            out["plugin"] = PLUGIN
            if "opaque_id" in fields:
                out["opaque_id"] = fields["opaque_id"][:64]
        elif kind == "trickle":
            out.update({k: fields[k] for k in ("candidate", "candidates") if k in fields})
        elif kind == "message":
            out["body"] = self._vet_body(fields.get("body"))
            if out["body"].get("ptype") == "publisher":
                self.publisher_handle = out["handle_id"]
            if "jsep" in fields:
                out["jsep"] = _vet_jsep(fields["jsep"])
        target: int = out.get("handle_id") or out.get("session_id") or 0  # what a detach or destroy ends
        self.pending[transaction] = Pending(kind, target)
        return out

    def observe(self, reply: Json) -> None:
        """Learn from what Janus sends this browser: the sessions and handles made and gone, answers that
        end a pending request."""
        kind = reply.get("janus")
        if kind == "detached":
            self.handles.pop(_int(reply.get("sender")), None)
        elif kind == "timeout":
            self._forget_session(_int(reply.get("session_id")))
        asked = self.pending.get(str(reply.get("transaction", "")))
        if asked is None or (kind == "ack" and asked.kind not in ACK_IS_FINAL):
            return
        del self.pending[str(reply["transaction"])]
        if kind != "success":
            return
        new_id = _int(reply.get("data", {}).get("id") if isinstance(reply.get("data"), dict) else None)
        if asked.kind == "create" and new_id:
            self.sessions.add(new_id)
        elif asked.kind == "attach" and new_id:
            self.handles[new_id] = asked.target
        elif asked.kind == "destroy":
            self._forget_session(asked.target)
        elif asked.kind == "detach":
            self.handles.pop(asked.target, None)

    def _forget_session(self, session: int) -> None:
        self.sessions.discard(session)
        for handle in [h for h, s in self.handles.items() if s == session]:
            del self.handles[handle]

    def published_streams(self, reply: Json) -> list[Json] | None:
        """The streams Janus accepted from this participant's publish (its answer to their offer), else None."""
        if reply.get("janus") != "event" or reply.get("sender") != self.publisher_handle:
            return None
        data = reply.get("plugindata", {}).get("data", {})
        streams = data.get("streams") if isinstance(data, dict) and data.get("configured") == "ok" else None
        return [s for s in streams if isinstance(s, dict)] if isinstance(streams, list) else None

    def _within_limits(self, kind: str) -> None:
        limits, peers = self.allowance.limits, self.allowance.connections
        now = time.monotonic()
        for peer in peers:
            for transaction in [t for t, p in peer.pending.items() if now - p.since > PENDING_FORGET_S]:
                del peer.pending[transaction]
        pending = [p.kind for peer in peers for p in peer.pending.values()]
        if len(pending) >= limits.pending:
            raise Refused(f"at most {limits.pending} requests may await Janus's answer at once")
        if kind == "create" and sum(len(p.sessions) for p in peers) + pending.count("create") >= limits.sessions:
            raise Refused(f"at most {limits.sessions} Janus sessions per participant")
        if kind == "attach" and sum(len(p.handles) for p in peers) + pending.count("attach") >= limits.handles:
            raise Refused(f"at most {limits.handles} Janus handles per participant")

    def _vet_body(self, body: Any) -> Json:
        if not isinstance(body, dict):
            raise Refused("a plugin message needs a body object")
        request = body.get("request")
        allowed = PLUGIN_FIELDS.get(request) if isinstance(request, str) else None
        if allowed is None:
            raise Refused(f"VideoRoom request {shown(request)} is not allowed" if isinstance(request, str) else
                          "field 'body.request' must name a VideoRoom request")  # fmt: skip
        extra = sorted(set(body) - set(allowed))
        if extra:
            raise Refused(f"field(s) {', '.join(map(shown, extra[:3]))} are not allowed in {request!r}")
        out = {key: checked(value, allowed[key], f"body.{key}") for key, value in body.items()}
        if request == "join":
            return self._vet_join(out)
        if request == "update":
            for key in ("subscribe", "unsubscribe"):
                if key in out:
                    self._vet_feeds(out[key], f"body.{key}")
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
            out["streams"] = self._vet_feeds(checked(body.get("streams"), SUBSCRIBED_STREAM, "body.streams"))
            for key in ("use_msid", "autoupdate"):
                if key in body:
                    out[key] = body[key]
            return out
        raise Refused("join as a 'publisher' or a 'subscriber'")

    def _vet_feeds(self, streams: list[Json], name: str = "body.streams") -> list[Json]:
        feeds = self.grant.feeds()
        for i, stream in enumerate(streams):
            if stream.get("feed") not in feeds:
                raise Refused(f"field '{name}[{i}].feed': feed {stream.get('feed')!r} is not in your room")
        return streams

    @staticmethod
    def _own(value: int | None, known: set[int], what: str) -> int:
        if value is None or value not in known:
            raise Refused(f"not your {what}")
        return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _vet_jsep(jsep: Json) -> Json:
    if jsep.get("type") not in ("offer", "answer") or "sdp" not in jsep:
        raise Refused("jsep must be an offer or an answer with an sdp")
    out: Json = {"type": jsep["type"], "sdp": jsep["sdp"]}
    if "trickle" in jsep:
        out["trickle"] = jsep["trickle"]
    return out


@dataclass
class Allowance:
    """One participant's media sockets, counted together against the limits."""

    limits: ProxyLimits
    connections: list[Vetting] = field(default_factory=list)


class Proxies:
    """Every participant's media sockets: what lets the limits count per participant, not per socket."""

    def __init__(self, limits: ProxyLimits) -> None:
        self.limits = limits
        self._allowances: dict[str, Allowance] = {}

    def connect(self, participant_id: str, grant: Grant) -> Vetting:
        """A new media socket's bookkeeping; Refused when the participant has as many open as allowed."""
        allowance = self._allowances.setdefault(participant_id, Allowance(self.limits))
        if len(allowance.connections) >= self.limits.sockets:
            raise Refused(f"at most {self.limits.sockets} media sockets per participant; close one first")
        return Vetting(grant, allowance)

    def disconnect(self, participant_id: str, vetting: Vetting) -> None:
        allowance = self._allowances.get(participant_id)
        if allowance is not None and vetting in allowance.connections:
            allowance.connections.remove(vetting)
            if not allowance.connections:
                del self._allowances[participant_id]


PROXIES_KEY = web.AppKey("proxies", Proxies)


def refusal(request: Any, reason: str) -> Json:
    transaction = request.get("transaction") if isinstance(request, dict) else None
    if not isinstance(transaction, str):
        transaction = None  # echo only what janus.js could have sent: never a list or an object back
    return {"janus": "error", "transaction": transaction, "error": {"code": 403, "reason": f"BabelRoom: {reason}"}}


@dataclass(frozen=True)
class MediaEvents:
    """What the gateway learns from a participant's Janus session: Janus accepted their publish (the streams it
    will receive), and one of their peer connections is up."""

    published: Callable[[list[Json]], None]
    media_up: Callable[[], None]


async def relay(
    browser: web.WebSocketResponse,
    upstream_url: str,
    api_secret: str,
    vetting: Vetting,
    events: MediaEvents,
) -> None:
    """Carry one browser's Janus session until either side closes or the participant's access ends; refused
    requests never reach Janus."""
    access = vetting.grant.access
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(upstream_url, protocols=(PROTOCOL,), max_msg_size=MAX_FRAME_BYTES) as janus,
    ):
        carriers = {
            asyncio.create_task(_browser_to_janus(browser, janus, vetting, api_secret)),
            asyncio.create_task(_janus_to_browser(janus, browser, vetting, events)),
            asyncio.create_task(access.ended.wait()),
        }
        try:
            await asyncio.wait(carriers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in carriers:
                task.cancel()
            await asyncio.gather(*carriers, return_exceptions=True)
        if not access.open:
            await _end_access(browser, janus, vetting, api_secret)


async def _end_access(
    browser: web.WebSocketResponse, janus: aiohttp.ClientWebSocketResponse, vetting: Vetting, api_secret: str
) -> None:
    """The participation is over: the browser hears nothing more, and every Janus session it made is destroyed
    (with its handles and peer connections) before the connection to Janus closes."""
    access = vetting.grant.access
    closing = asyncio.create_task(browser.close(code=access.code, message=close_reason(access.reason)))
    closing.add_done_callback(lambda task: task.cancelled() or task.exception())  # a dropped socket is no news
    goodbyes = {f"end-{session}": session for session in vetting.sessions}
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
        for transaction, session in goodbyes.items():
            await janus.send_json(
                {"janus": "destroy", "session_id": session, "transaction": transaction, "apisecret": api_secret}
            )
        async with asyncio.timeout(GOODBYE_S):
            while goodbyes and (frame := await janus.receive()).type is aiohttp.WSMsgType.TEXT:
                goodbyes.pop(str(frame.json().get("transaction")), None)
    if goodbyes:
        log.warning("Janus did not confirm %d session(s) destroyed; closing the connection ends them", len(goodbyes))
    await asyncio.wait({closing}, timeout=GOODBYE_S)  # the close frame went out at once; this awaits the reply
    closing.cancel()


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
            request = json_object(frame.data.encode(errors="surrogatepass"))
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
    events: MediaEvents,
) -> None:
    async for frame in janus:
        if frame.type is not aiohttp.WSMsgType.TEXT:
            continue
        reply = frame.json()
        vetting.observe(reply)
        streams = vetting.published_streams(reply)
        if streams is not None:
            events.published(streams)
        if reply.get("janus") == "webrtcup":
            events.media_up()
        if browser.closed:
            return
        await browser.send_str(frame.data)
    await browser.close(message=b"the media server closed the connection")  # the page notices and rejoins
