"""Malformed requests against every endpoint the Janus gateway has, run as the real service (gateway and
workers as processes, a real Janus and Redis): never a 5xx, every /api error is JSON, broken WebSocket
upgrades are refused, hostile frames on both of a participant's sockets are answered or dropped without
closing them, every Janus request outside the participant's grant is refused by the proxy, a frame too
big closes a socket with a reason (1009), loose room and display names get a 400 on every route that
takes one, nothing is logged as unexpected, and afterwards the service still turns speech into a
translated caption. The harness (tests/http_fuzz.py) is endpoint-agnostic: a new endpoint is one more
`Endpoint` line."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, ClientTimeout, ClientWebSocketResponse, WSMsgType
from yarl import URL

from benchmarks.hostile import worst_json
from benchmarks.participant import ScriptedParticipant
from gateway.media.janus import PROTOCOL
from gateway.options import CLIENT_MAX_SIZE
from gateway.web.proxy import MAX_FRAME_BYTES, PLUGIN
from tests.browser import get_json
from tests.http_fuzz import (
    MAX_REQUEST_LINE,
    Endpoint,
    Frame,
    forbidden_janus_requests,
    fuzz_requests,
    problems,
    send,
    socket_frames,
    worst_requests,
)
from tests.speech import espeak, silence
from tests.test_gateway import SpeechTrack

REQUESTS = 1000
# The fuzz is about each request's answer, from one address: the limits per address (tests/test_guard.py) would
# answer most of them 429 before they reach what they are aimed at.
UNLIMITED = {"BABELROOM_JOIN_BURST": "100000", "BABELROOM_AUTH_FAILURE_BURST": "100000"}
FRAMES_PER_SOCKET = 150
REPLY_S = 10.0
# Close codes a socket may end with here: normal, policy, message too big. Never 1006 (dropped) or 1011.
CLEAN_CLOSES = {1000, 1008, 1009}


@pytest.fixture
def service_settings() -> dict[str, str]:
    return UNLIMITED


async def join(http: ClientSession, room: str, name: str) -> dict[str, Any]:
    body = {"name": name, "speak": "en", "hear": "es", "options": {"consent": True}}
    async with http.post(f"/api/rooms/{room}/join", json=body) as reply:
        assert reply.status == 200, await reply.text()
        return dict(await reply.json())


def endpoints(seat: dict[str, Any]) -> list[Endpoint]:
    join_body = {"name": "Ana", "speak": "en", "hear": "es", "token": "", "options": {"consent": True}}
    room, own = {"room": "fuzz"}, {"session": seat["id"]}
    ticket = {"ticket": seat["ticket"]}
    return [
        Endpoint("GET", "/"),
        Endpoint("GET", "/room/{room}", room, query={"name": "Ana", "speak": "en", "hear": "es"}),
        Endpoint("GET", "/api/config"),
        Endpoint("POST", "/api/rooms/{room}/join", room, body=join_body),
        Endpoint("GET", "/api/rooms/{room}", room),
        Endpoint("GET", "/api/sessions/{session}/events", own, query=ticket, websocket=True),
        Endpoint("GET", "/api/sessions/{session}/janus", own, query=ticket, websocket=True),
        Endpoint("POST", "/api/sessions/{session}/leave", own, query=ticket),
        Endpoint("GET", "/healthz"),
        Endpoint("GET", "/metrics"),
        Endpoint("GET", "/static/vendor/{name}", {"name": "janus.js"}),
        Endpoint("GET", "/static/{name}", {"name": "room.js"}),
    ]


def worst_frames(limit: int) -> list[Frame]:
    """The worst JSON texts a socket whose frames may be `limit` bytes can be sent (benchmarks/hostile.py)."""
    return [Frame(f"worst: {label}", body.decode()) for label, body in worst_json(limit - 1)]


async def send_frame(socket: ClientWebSocketResponse, data: str | bytes) -> None:
    await (socket.send_bytes(data) if isinstance(data, bytes) else socket.send_str(data))


async def reply_to(socket: ClientWebSocketResponse, matches: Any) -> dict[str, Any]:
    """The first JSON message `matches` accepts, skipping the rest; fails if the socket closes first."""
    deadline = time.monotonic() + REPLY_S
    while time.monotonic() < deadline:
        frame = await socket.receive(timeout=deadline - time.monotonic())
        assert frame.type is WSMsgType.TEXT, f"the socket ended: {frame.type} {socket.close_code} {frame.extra}"
        message = json.loads(frame.data)
        if matches(message):
            return dict(message)
    raise AssertionError("no reply")


async def closed_by_too_big_a_frame(socket: ClientWebSocketResponse, limit: int) -> int:
    """The close code the server sends after a frame over its limit; fails on a drop without a close frame."""
    await socket.send_str("x" * (limit + 1))
    while (frame := await socket.receive(timeout=REPLY_S)).type is WSMsgType.TEXT:
        pass
    assert frame.type is WSMsgType.CLOSE, f"dropped without a close frame: {frame}"
    return int(frame.data)


async def fuzz_events_socket(http: ClientSession, seat: dict[str, Any]) -> dict[str, int]:
    socket = await http.ws_connect(f"{seat['events']}?ticket={seat['ticket']}")
    valid = [{"type": "mute", "muted": True}, {"type": "floor", "action": "request"}, {"type": "camera", "on": False}]
    frames = socket_frames(valid, FRAMES_PER_SOCKET, seed=11) + worst_frames(CLIENT_MAX_SIZE)
    for frame in frames:
        await send_frame(socket, frame.data)
    await socket.send_json({"type": "mute", "muted": False})
    await reply_to(socket, lambda m: m.get("type") == "roster" and not m["participants"][0]["muted"])
    assert not socket.closed, "hostile frames closed the events socket"
    close_code = await closed_by_too_big_a_frame(socket, 64 * 1024)
    assert close_code in CLEAN_CLOSES, close_code
    return {"frames": len(frames), "close": close_code}


async def fuzz_janus_socket(http: ClientSession, seat: dict[str, Any]) -> dict[str, int]:
    socket = await http.ws_connect(f"{seat['janus']}?ticket={seat['ticket']}", protocols=(PROTOCOL,))
    ids = iter(range(10**6))

    async def ask(request: dict[str, Any], answer: str = "success") -> dict[str, Any]:
        request = {"transaction": f"fz{next(ids)}", **request}
        await socket.send_json(request)
        return await reply_to(socket, lambda m: m.get("transaction") == request["transaction"] and m["janus"] == answer)

    session = (await ask({"janus": "create"}))["data"]["id"]
    handle = (await ask({"janus": "attach", "session_id": session, "plugin": PLUGIN}))["data"]["id"]
    forbidden = forbidden_janus_requests(seat["room_id"], seat["feed_id"], session, handle)
    for request in forbidden:
        await socket.send_json({"transaction": f"no{next(ids)}", **request})
        reply = await reply_to(socket, lambda m: m.get("janus") == "error")
        assert reply["error"]["code"] == 403 and reply["error"]["reason"].startswith("BabelRoom:"), (request, reply)
    valid = [
        {"janus": "keepalive", "session_id": session, "transaction": "k"},
        {"janus": "message", "session_id": session, "handle_id": handle, "body": {"request": "leave"}},
    ]
    frames = socket_frames(valid, FRAMES_PER_SOCKET, seed=13) + worst_frames(MAX_FRAME_BYTES)
    for frame in frames:
        await send_frame(socket, frame.data)
    await ask({"janus": "keepalive", "session_id": session}, answer="ack")  # from Janus: the relay still carries it
    close_code = await closed_by_too_big_a_frame(socket, MAX_FRAME_BYTES)
    assert close_code in CLEAN_CLOSES, close_code
    return {"forbidden": len(forbidden), "frames": len(frames), "close": close_code}


# Room names with a trailing newline, a lone surrogate (CESU bytes), a bidi override; display names the same.
LOOSE_ROOMS = ("demo%0A", "%ED%A0%80", "demo%E2%80%AE", "demo%E2%81%A6")
LOOSE_NAMES = ("Ana\n\u202e", "\ud800", "a\udfffb", "\u202eevil", "Ana\u2066x", "\u061cAna")


async def loose_names_refused(http: ClientSession) -> int:
    """Every entry point that takes a room or display name refuses loose ones with a 400; returns the count."""
    join_body = {"speak": "en", "hear": "es"}
    checked = 0
    for room in LOOSE_ROOMS:
        for method, path, body in (
            ("GET", f"/room/{room}?name=Ana&speak=en&hear=es", None),
            ("GET", f"/api/rooms/{room}", None),
            ("POST", f"/api/rooms/{room}/join", {**join_body, "name": "Ana"}),
        ):
            async with http.request(method, URL(path, encoded=True), json=body) as reply:
                assert reply.status == 400, (method, path, reply.status)
                checked += 1
    for name in LOOSE_NAMES:
        raw = json.dumps({**join_body, "name": name}).encode()  # \\u escapes: a lone surrogate survives
        headers = {"Content-Type": "application/json"}
        async with http.post("/api/rooms/names/join", data=raw, headers=headers) as reply:
            assert reply.status == 400 and "display name" in (await reply.json())["error"], (name, reply.status)
            checked += 1
    return checked


async def still_translates(base_url: str) -> str:
    """A real segment: Bob says a sentence in English, Ana reads it in Spanish."""
    ana = ScriptedParticipant(base_url, "after", "Ana", "es", "es")
    bob = ScriptedParticipant(base_url, "after", "Bob", "en", "en")
    try:
        await ana.join(SpeechTrack(silence(90)))
        speech = [silence(1.0), espeak("the house is big"), silence(60)]
        await bob.join(SpeechTrack(np.concatenate(speech)))
        final = await ana.wait_for(lambda: ana.captions(final=True, lang="es"), "a Spanish caption", timeout_s=90)
        return str(final[0]["text"])
    finally:
        await bob.close()
        await ana.close()


@pytest.mark.slow
async def test_malformed_requests_and_frames_get_clear_refusals_and_the_service_still_translates(
    service: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    statuses: collections.Counter[int] = collections.Counter()
    found: list[str] = []
    async with ClientSession(base_url=service, timeout=ClientTimeout(total=30)) as http:
        targets = endpoints(await join(http, "fuzz", "Target"))
        requests = fuzz_requests(targets, REQUESTS) + worst_requests(targets, CLIENT_MAX_SIZE)
        for request in requests:
            outcome = await send(http, service, request)
            statuses[outcome.status] += 1
            found += problems(request, outcome)
        events = await fuzz_events_socket(http, await join(http, "sockets", "Eve"))
        janus = await fuzz_janus_socket(http, await join(http, "sockets", "Mallory"))
        names = await loose_names_refused(http)
    upgrades = sum(request.label.startswith("upgrade") for request in requests)
    print(f"{len(requests)} requests ({upgrades} broken upgrades), statuses {dict(sorted(statuses.items()))}; "
          f"events socket {events}; janus socket {janus}; {names} loose names refused; "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert not found, "\n".join(found[:20])
    assert statuses[101] == 0 and sum(statuses[s] for s in statuses if s >= 400) > REQUESTS * 0.8

    status, health = get_json(f"{service}/healthz")
    assert status == 200 and all(task["restarts"] == 0 for task in health["tasks"].values()), health
    text = await still_translates(service)
    print(f"after the fuzz, a caption: {text!r}")
    assert "casa" in text.lower()
    gateway_log = next(tmp_path.glob("proc0-*.log")).read_text(errors="replace")
    # nothing is logged as an error: aiohttp's refusals of unparsable requests are one WARNING line each
    assert " ERROR " not in gateway_log and "Traceback" not in gateway_log, gateway_log[-3000:]
    if any(len(r.path) > MAX_REQUEST_LINE for r in requests):
        assert "answered 400 (LineTooLong" in gateway_log
