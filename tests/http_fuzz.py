"""A fuzz harness for the gateway's HTTP endpoints: describe each endpoint once (method, path template,
a valid body and query), and it derives malformed requests from it: bad path parameters, bodies that
are not JSON (or JSON too deep, not an object, not UTF-8, compressed garbage), wrong headers, wrong
field types, hostile strings, wrong methods, oversize bodies, and for WebSocket endpoints broken upgrade
handshakes; `worst_requests` adds the worst input of each kind at the size limits. `problems` says what the
service must never do: answer 5xx, or answer an /api request with
anything but a JSON error. `socket_frames` and `forbidden_janus_requests` are the hostile messages for
an open socket: frames the gateway must answer or drop without closing, and Janus requests the proxy
must refuse.

Deterministic for a seed: a failure names its label and can be replayed.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import ClientSession
from yarl import URL

from benchmarks.hostile import worst_content_types, worst_json, worst_queries


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # e.g. "/api/rooms/{room}/join"
    params: Mapping[str, str] = field(default_factory=dict)  # valid values of the template's parameters
    body: Mapping[str, Any] | None = None  # a valid JSON body; None when the endpoint takes none
    query: Mapping[str, str] = field(default_factory=dict)
    websocket: bool = False  # a GET that upgrades: also fuzzed with broken handshakes


@dataclass(frozen=True)
class FuzzRequest:
    label: str
    method: str
    path: str  # percent-encoded, sent as is
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    status: int
    content_type: str
    text: str


# Percent-encoded path parameters: trailing newline (a `$` anchor's blind spot), NUL, traversal,
# lone surrogate (CESU bytes), bidi override, overlong, unicode, empty-ish.
EVIL_PARAMS = (
    "demo%0A", "demo%0D%0A", "%0Ademo", "demo%00", "..", "%2E%2E%2Fetc", "demo%2Fx", "%ED%A0%80", "demo%E2%80%AE",
    "a" * 65, "a" * 5000, "%C3%A9t%C3%A9", "-demo", "_", "demo%20", "%FF%FE", "demo%25", "%F0%9F%98%80",
    "demo;x", "demo.json", "%7B%7D",
)  # fmt: skip
EVIL_STRINGS: tuple[Any, ...] = (
    "", " ", "\ud800", "a\udfffb", "\u202eevil", "Ana\u2066x", "\u0000", "\n", "\x1b[31m", "a" * 100_000,
    "\ufeff", "🙂" * 70, "\u200d", None, 0, -1, 1.5, 10**30, True, False, [], {}, ["en"], {"a": 1},
)  # fmt: skip
RAW_BODIES: tuple[tuple[str, bytes], ...] = (
    ("empty body", b""),
    ("not json", b"hello"),
    ("truncated json", b'{"name": "Ana", "speak": '),
    ("trailing garbage", b'{"name": "Ana"} xyz'),
    ("json list", b'["name", "Ana"]'),
    ("json string", b'"Ana"'),
    ("json number", b"42"),
    ("json null", b"null"),
    ("NaN", b'{"name": NaN}'),
    ("Infinity", b'{"name": "Ana", "speak": Infinity}'),
    ("deep list", b"[" * 100_000 + b"]" * 100_000),
    ("deep object", b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
    ("deep in a field", b'{"name": "Ana", "options": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("huge integer", b'{"name": ' + b"9" * 10_000 + b"}"),
    ("invalid utf-8", b'{"name": "\xff\xfe\xfd"}'),
    ("utf-8 BOM", b'\xef\xbb\xbf{"name": "Ana"}'),
    ("utf-16", '{"name": "Ana"}'.encode("utf-16")),
    ("lone surrogate escape", b'{"name": "\\ud800"}'),
    ("duplicate keys", b'{"name": "Ana", "name": "Bob"}'),
    ("NUL bytes", b'{"name": "A\x00na"}'),
)
CONTENT_TYPES = (
    "application/json; charset=bogus-xyz", "application/json; charset=utf-16", "application/json; charset=latin-1",
    "application/json; charset=", "application/json;;;", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=\"utf-8", "", "*/*",
)  # fmt: skip
# A valid upgrade handshake, and ways to break it: one header missing or wrong at a time.
UPGRADE = {
    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}  # fmt: skip
BROKEN_UPGRADES: tuple[tuple[str, str | None], ...] = (
    ("Upgrade", None), ("Upgrade", "h2c"), ("Upgrade", "web socket"), ("Connection", None),
    ("Connection", "close"), ("Sec-WebSocket-Version", None), ("Sec-WebSocket-Version", "99"),
    ("Sec-WebSocket-Version", "-1"), ("Sec-WebSocket-Key", None), ("Sec-WebSocket-Key", ""),
    ("Sec-WebSocket-Key", "c2hvcnQ="), ("Sec-WebSocket-Key", "!!not base64!!"), ("Sec-WebSocket-Key", "A" * 4000),
)  # fmt: skip
MAX_REQUEST_LINE = 8190  # aiohttp's max_line_size
ENCODINGS = ("gzip", "deflate", "br", "x-unknown", "gzip, gzip", "identity, gzip")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def fuzz_requests(endpoints: Sequence[Endpoint], count: int, seed: int = 7) -> list[FuzzRequest]:
    """`count` malformed requests, spread over the endpoints and the kinds of damage."""
    rng = random.Random(seed)
    makers: list[Callable[[Endpoint, random.Random], FuzzRequest | None]] = [
        _evil_param, _raw_body, _content_type, _content_encoding, _evil_field, _missing_field, _evil_query,
        _wrong_method, _oversize, _field_type_swap, _mangled_text, _broken_upgrade,
    ]  # fmt: skip
    requests: list[FuzzRequest] = []
    while len(requests) < count:
        endpoint, make = rng.choice(endpoints), rng.choice(makers)
        request = make(endpoint, rng)
        if request is not None:
            requests.append(request)
    return requests


def worst_requests(endpoints: Sequence[Endpoint], body_limit: int) -> list[FuzzRequest]:
    """Every endpoint with every worst input of its kind (benchmarks/hostile.py), at the size limits: bodies and
    Content-Type headers where it takes a body, each query parameter. (A WebSocket's extension offers are parsed
    only once its ticket is good, when it opens: tests/test_linear_input.py sends those.)"""
    requests: list[FuzzRequest] = []
    for endpoint in endpoints:
        if endpoint.body is not None:
            requests += [
                _json_request(endpoint, f"worst body: {label}", body) for label, body in worst_json(body_limit)
            ]
            valid = json.dumps(endpoint.body).encode()
            requests += [_json_request(endpoint, f"worst content-type: {label}", valid, **{"Content-Type": value})
                         for label, value in worst_content_types()]  # fmt: skip
        for key in endpoint.query:
            requests += [FuzzRequest(f"worst query {key}: {label}", endpoint.method,
                                     f"{_path(endpoint, query={})}?{key}={value}")
                         for label, value in worst_queries()]  # fmt: skip
    return requests


async def send(session: ClientSession, base_url: str, request: FuzzRequest) -> Outcome:
    url = URL(base_url.rstrip("/") + request.path, encoded=True)
    async with session.request(
        request.method, url, data=request.body, headers=dict(request.headers), allow_redirects=False
    ) as reply:
        text = await reply.text(errors="replace")
        return Outcome(reply.status, reply.content_type, text)


def problems(request: FuzzRequest, outcome: Outcome) -> list[str]:
    """What must never happen: a 5xx, or an /api error that is not JSON {"error": ...}."""
    found = []
    if outcome.status >= 500:
        found.append(f"{request.label}: {request.method} {request.path[:80]} -> {outcome.status} {outcome.text[:200]}")
    if len(request.path) > MAX_REQUEST_LINE and outcome.status == 400:
        return found  # aiohttp's parser refuses the line before any route (or our JSON errors) is reached
    if request.path.startswith("/api/") and outcome.status >= 400:
        try:
            ok = "error" in json.loads(outcome.text)
        except ValueError:
            ok = False
        if not ok or outcome.content_type != "application/json":
            found.append(
                f"{request.label}: {request.path[:80]} -> {outcome.status} not a JSON error: {outcome.text[:120]}"
            )
    return found


# -- the kinds of damage ------------------------------------------------------------------------------
def _path(endpoint: Endpoint, params: Mapping[str, str] | None = None, query: Mapping[str, str] | None = None) -> str:
    values = {k: quote(v, safe="") for k, v in endpoint.params.items()} | dict(params or {})
    path = endpoint.template.format(**values)
    query = endpoint.query if query is None else query
    return f"{path}?{urlencode(query, errors='surrogatepass')}" if query else path


def _json_request(endpoint: Endpoint, label: str, body: bytes, **headers: str) -> FuzzRequest:
    return FuzzRequest(label, endpoint.method, _path(endpoint), {"Content-Type": "application/json", **headers}, body)


def _evil_param(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.params:
        return None
    name, value = rng.choice(list(endpoint.params)), rng.choice(EVIL_PARAMS)
    body = json.dumps(endpoint.body).encode() if endpoint.body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return FuzzRequest(f"path {name}={value[:20]}", endpoint.method, _path(endpoint, {name: value}), headers, body)


def _raw_body(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if endpoint.body is None:
        return None
    label, body = rng.choice(RAW_BODIES)
    return _json_request(endpoint, f"body: {label}", body)


def _content_type(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if endpoint.body is None:
        return None
    content_type = rng.choice(CONTENT_TYPES)
    return _json_request(
        endpoint, f"content-type {content_type!r}", json.dumps(endpoint.body).encode(), **{"Content-Type": content_type}
    )


def _content_encoding(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if endpoint.body is None:
        return None
    encoding, plain = rng.choice(ENCODINGS), json.dumps(endpoint.body).encode()
    body = rng.choice([rng.randbytes(64), gzip.compress(plain)[:-9], zlib.compress(plain)[3:], gzip.compress(plain)])
    return _json_request(endpoint, f"content-encoding {encoding}", body, **{"Content-Encoding": encoding})


def _evil_field(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.body:
        return None
    key, value = rng.choice(list(endpoint.body)), rng.choice(EVIL_STRINGS)
    body = {**endpoint.body, key: value}
    return _json_request(endpoint, f"field {key}={str(value)[:20]!r}", json.dumps(body).encode())


def _field_type_swap(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.body:
        return None
    key = rng.choice(list(endpoint.body))
    value = endpoint.body[key]
    swapped = rng.choice([[value], {"value": value}, str(value), len(str(value)), value is None])
    return _json_request(
        endpoint, f"field {key} as {type(swapped).__name__}", json.dumps({**endpoint.body, key: swapped}).encode()
    )


def _mangled_text(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    """A text field damaged line by line (an SDP, a token): lines dropped, repeated, cut or garbled."""
    texts = [key for key, value in (endpoint.body or {}).items() if isinstance(value, str) and value]
    if not texts:
        return None
    key = rng.choice(texts)
    lines = endpoint.body[key].split("\n")  # type: ignore[index]
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(lines))
        how = rng.randrange(4)
        if how == 0 and len(lines) > 1:
            del lines[i]
        elif how == 1:
            lines.insert(i, lines[i])
        elif how == 2:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            lines[i] = lines[i][:2] + rng.choice(["", "x", "-1", "999999999999", "\x00", ":" * 8, "a=" * 50])
    body = {**endpoint.body, key: "\n".join(lines)}  # type: ignore[dict-item]
    return _json_request(endpoint, f"field {key} mangled", json.dumps(body).encode())


def _missing_field(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.body:
        return None
    key = rng.choice(list(endpoint.body))
    body = {k: v for k, v in endpoint.body.items() if k != key}
    return _json_request(endpoint, f"without {key}", json.dumps(body).encode())


def _evil_query(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.query:
        return None
    key, value = rng.choice(list(endpoint.query)), rng.choice(EVIL_STRINGS)
    query = {**endpoint.query, key: str(value)}
    return FuzzRequest(f"query {key}={str(value)[:20]!r}", endpoint.method, _path(endpoint, query=query))


def _wrong_method(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    method = rng.choice([m for m in METHODS if m != endpoint.method])
    return FuzzRequest(f"method {method}", method, _path(endpoint))


def _oversize(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if endpoint.body is None:
        return None
    body = json.dumps({**endpoint.body, "padding": "x" * rng.choice([70_000, 1_000_000])}).encode()
    return _json_request(endpoint, f"oversize body {len(body)} bytes", body)


def _broken_upgrade(endpoint: Endpoint, rng: random.Random) -> FuzzRequest | None:
    if not endpoint.websocket:
        return None
    name, value = rng.choice(BROKEN_UPGRADES)
    headers = {k: v for k, v in (UPGRADE | {name: value or ""}).items() if k != name or value is not None}
    return FuzzRequest(f"upgrade {name}={str(value)[:20]!r}", "GET", _path(endpoint), headers)


# -- an open socket -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    label: str
    data: str | bytes  # bytes go as a binary frame


def socket_frames(valid: Sequence[Mapping[str, Any]], count: int, seed: int = 7) -> list[Frame]:
    """Hostile frames for an open socket whose valid messages are `valid`: raw garbage, binary, deep
    nesting, and valid messages with a field made hostile, dropped or retyped. None is too big to read."""
    rng = random.Random(seed)
    frames: list[Frame] = []
    while len(frames) < count:
        message = dict(rng.choice(valid))
        how = rng.randrange(5)
        if how == 0:
            label, body = rng.choice(RAW_BODIES[:-3])  # the last ones are about HTTP's charset handling
            frames.append(Frame(f"text: {label}", body.decode("utf-8", "replace")[:60_000]))
        elif how == 1:
            frames.append(Frame("binary", rng.randbytes(rng.choice([0, 1, 64, 4096]))))
        elif how == 2:
            key, value = rng.choice(list(message)), rng.choice(EVIL_STRINGS)
            frames.append(Frame(f"field {key}={str(value)[:20]!r}", json.dumps({**message, key: value})[:60_000]))
        elif how == 3:
            key = rng.choice(list(message))
            frames.append(Frame(f"without {key}", json.dumps({k: v for k, v in message.items() if k != key})))
        else:
            frames.append(Frame("deep", json.dumps(message)[:-1] + ', "x": ' + "[" * 20_000 + "]" * 20_000 + "}"))
    return frames


def forbidden_janus_requests(room_id: int, feed_id: int, session_id: int, handle_id: int) -> list[dict[str, Any]]:
    """Janus requests a participant of room `room_id` (feed `feed_id`, holding `session_id` and
    `handle_id`) may not make: the proxy must refuse each with a 403 before it reaches Janus."""
    own = {"session_id": session_id, "handle_id": handle_id}
    other_room, other_feed = room_id + 1, feed_id + 1

    def plugin(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"janus": "message", **own, "body": body, **fields}

    return [
        {"janus": "destroy", "session_id": session_id + 1},
        {"janus": "keepalive", "session_id": 1},
        {"janus": "attach", "session_id": session_id, "plugin": "janus.plugin.echotest"},
        {"janus": "attach", "session_id": session_id, "plugin": "janus.plugin.streaming"},
        {"janus": "detach", "session_id": session_id, "handle_id": handle_id + 1},
        {"janus": "info"},
        {"janus": "ping"},
        {"janus": "claim", "session_id": session_id},
        {"janus": "list_sessions"},
        {"janus": "add_token", "token": "x"},
        {"janus": "message", "session_id": session_id},
        {"janus": "create", "transaction": ""},
        {"janus": "create", "transaction": 7},
        {"janus": "create", "transaction": "t" * 65},
        plugin({"request": "create", "room": other_room}),
        plugin({"request": "destroy", "room": room_id}),
        plugin({"request": "edit", "room": room_id, "new_description": "x"}),
        plugin({"request": "list"}),
        plugin({"request": "exists", "room": room_id}),
        plugin({"request": "listparticipants", "room": room_id}),
        plugin({"request": "kick", "room": room_id, "id": other_feed}),
        plugin({"request": "moderate", "room": room_id}),
        plugin({"request": "rtp_forward", "room": room_id, "publisher_id": feed_id, "host": "198.18.0.1"}),
        plugin({"request": "stop_rtp_forward", "room": room_id}),
        plugin({"request": "listforwarders", "room": room_id}),
        plugin({"request": "enable_recording", "room": room_id}),
        plugin({"request": "allowed", "room": room_id}),
        plugin({"request": "play_file", "filename": "/etc/passwd"}),
        plugin({"request": "join", "ptype": "publisher", "room": other_room}),
        plugin({"request": "join", "ptype": "publisher", "room": room_id, "id": other_feed}),
        plugin({"request": "join", "ptype": "publisher", "room": room_id, "pin": "guess"}),
        plugin({"request": "join", "ptype": "subscriber", "room": other_room, "streams": [{"feed": feed_id}]}),
        plugin({"request": "join", "ptype": "subscriber", "room": room_id, "streams": [{"feed": other_feed}]}),
        plugin({"request": "join", "ptype": "subscriber", "room": room_id, "streams": []}),
        plugin({"request": "join", "ptype": "subscriber", "room": room_id, "streams": [{"feed": feed_id, "x": 1}]}),
        plugin({"request": "join", "ptype": "listener", "room": room_id}),
        plugin({"request": "configure", "record": True, "filename": "/tmp/x"}),
        plugin({"request": "publish", "record": True}),
        plugin({"request": "update", "subscribe": "all"}),
        plugin({"request": "switch", "streams": []}),
        plugin({"request": None}),
        plugin({"request": ["join"]}),
        plugin("join"),
        plugin([{"request": "join"}]),  # type: ignore[arg-type]
        plugin({"request": "configure"}, jsep={"type": "pranswer", "sdp": "v=0"}),
        plugin({"request": "configure"}, handle_id=handle_id + 1),
        {"janus": "trickle", "session_id": session_id, "handle_id": handle_id + 1, "candidate": {"completed": True}},
        {"janus": "hangup", "session_id": session_id + 1, "handle_id": handle_id},
    ]
