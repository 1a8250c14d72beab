"""Every frame of a participant's two sockets is checked by type before use (issue 28, finding 5): a field of the
wrong JSON type gets a refusal that names it (the proxy: a Janus-style 403; the events socket: an error event with
status 400), the socket stays open, and nothing is logged as an unexpected error. Frames come from the sockets'
schemas through hypothesis (tests/socket_fuzz.py): first against the checks themselves, thousands of them, then
through the real sockets of a gateway in front of a real Janus.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import BaseTestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babelroom.janus import JanusConfig
from gateway.rooms import commands
from gateway.rooms.commands import BadCommand
from gateway.web.proxy import REQUEST_FIELDS, Grant, Refused, Vetting
from gateway.web.tokens import issue_token
from tests.socket_fuzz import command_frames, json_values, proxy_frames
from tests.test_gateway import SECRET, own_server
from tests.test_janus_security import PLUGIN, RawJanus

SESSION, HANDLE = 1001, 2002
SOCKET_EXAMPLES = 500
REPLY_S = 10.0


def vetting() -> Vetting:
    """A connection's bookkeeping that owns SESSION and HANDLE, as after janus.js's create and attach."""
    checks = Vetting(Grant(room_id=7, pin="pin", feed_id=8, display="Eve", feeds=lambda: {8, 9}))
    for transaction, request, made in (("c", {"janus": "create"}, SESSION), ("a", {"janus": "attach"}, HANDLE)):
        checks.vet({**request, "transaction": transaction, "session_id": SESSION, "plugin": PLUGIN})
        checks.observe({"janus": "success", "transaction": transaction, "data": {"id": made}})
    return checks


def test_the_reported_frames_get_a_refusal_naming_the_field() -> None:
    """Both crashed the proxy with `TypeError: unhashable type` before (issue 28, finding 5)."""
    with pytest.raises(Refused, match="'janus' must be a string"):
        vetting().vet({"janus": [], "transaction": "t1"})
    subscribe = {"request": "join", "ptype": "subscriber", "room": 7, "streams": [{"feed": [9]}]}
    with pytest.raises(Refused, match=r"'body\.streams\[0\]\.feed' must be an integer"):
        vetting().vet({"janus": "message", "transaction": "t2", "session_id": SESSION, "handle_id": HANDLE,
                       "body": subscribe})  # fmt: skip
    with pytest.raises(BadCommand, match="'muted' must be true or false") as refused:
        commands.parse(json.dumps({"type": "mute", "muted": "yes"}))
    assert refused.value.event()["field"] == "muted" and refused.value.event()["status"] == 400


@settings(max_examples=3000, deadline=None)
@given(proxy_frames(SESSION, HANDLE))
def test_a_janus_request_with_a_field_of_the_wrong_type_is_refused_naming_it(case: tuple[dict[str, Any], str]) -> None:
    frame, name = case
    with pytest.raises(Refused) as refused:
        vetting().vet(frame)
    assert f"'{name}'" in str(refused.value), (frame, str(refused.value))


@settings(max_examples=2000, deadline=None)
@given(command_frames())
def test_an_events_frame_with_a_field_of_the_wrong_type_is_refused_naming_it(case: tuple[dict[str, Any], str]) -> None:
    frame, name = case
    with pytest.raises(BadCommand) as refused:
        commands.parse(json.dumps(frame))
    assert refused.value.field == name and refused.value.status == 400, (frame, str(refused.value))


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.sampled_from([*REQUEST_FIELDS, "x"]), json_values))
def test_any_json_object_is_vetted_or_refused_and_nothing_else(request: dict[str, Any]) -> None:
    try:
        vetted = vetting().vet(request)
    except Refused:
        return
    assert vetted["janus"] in ("create", "keepalive", "destroy", "attach", "detach", "hangup", "trickle", "message")


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "muted", "on", "action", "participant", "x"]), json_values))
def test_any_json_object_is_a_command_or_refused_and_nothing_else(frame: dict[str, Any]) -> None:
    try:
        command = commands.parse(json.dumps(frame))
    except BadCommand as refused:
        assert refused.field is None or refused.field in frame or refused.field == "type"
        return
    assert command.kind in commands.COMMANDS


# -- through the real sockets -------------------------------------------------------------------------
class Seat:
    """A participant's two open sockets: the events socket, and a media socket with a Janus session and handle."""

    def __init__(self, events: ClientWebSocketResponse, janus: RawJanus) -> None:
        self.events, self.janus = events, janus
        self.transactions = (f"fz{n}" for n in itertools.count())


@pytest.fixture
async def seat(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> AsyncIterator[Seat]:
    async with own_server(redis_url, stream_prefix, janus_config) as (server, http):
        yield await sit_down(server, http)


async def sit_down(server: BaseTestServer, http: ClientSession) -> Seat:
    body = {"speak": "en", "hear": "en", "token": issue_token(SECRET, "fuzz", "Eve")}
    async with http.post("/api/rooms/fuzz/join", json=body) as response:
        joined = await response.json()
    events = await http.ws_connect(f"{joined['events']}?ticket={joined['ticket']}")
    janus = RawJanus(
        await http.ws_connect(f"{joined['janus']}?ticket={joined['ticket']}", protocols=("janus-protocol",))
    )
    await janus.open()
    return Seat(events, janus)


async def next_text(socket: ClientWebSocketResponse, matches: Any) -> dict[str, Any]:
    """The next JSON message `matches` accepts; fails if the socket closes first."""
    while True:
        frame = await socket.receive(timeout=REPLY_S)
        assert frame.type is WSMsgType.TEXT, f"the socket ended: {frame.type} {socket.close_code} {frame.extra}"
        message = json.loads(frame.data)
        if matches(message):
            return dict(message)


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def unexpected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@settings(max_examples=SOCKET_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=proxy_frames(0, 0))
async def test_through_the_media_socket_each_wrongly_typed_request_gets_its_403(
    seat: Seat, errors: pytest.LogCaptureFixture, case: tuple[dict[str, Any], str]
) -> None:
    frame, name = case
    if name != "session_id":
        frame["session_id"] = seat.janus.session
    if name != "handle_id":
        frame["handle_id"] = seat.janus.handle
    transaction = next(seat.transactions) if name != "transaction" else None
    if transaction is not None:
        frame["transaction"] = transaction
    await seat.janus.socket.send_json(frame)
    reply = await next_text(seat.janus.socket, lambda m: m.get("janus") == "error" and m["transaction"] == transaction)
    assert reply["error"]["code"] == 403 and f"'{name}'" in reply["error"]["reason"], (frame, reply)
    assert not unexpected(errors), unexpected(errors)


@settings(max_examples=SOCKET_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=command_frames())
async def test_through_the_events_socket_each_wrongly_typed_frame_gets_its_error_event(
    seat: Seat, errors: pytest.LogCaptureFixture, case: tuple[dict[str, Any], str]
) -> None:
    frame, name = case
    await seat.events.send_json(frame)
    reply = await next_text(seat.events, lambda m: m.get("type") == "error")
    assert reply["status"] == 400 and reply["field"] == name, (frame, reply)
    assert not unexpected(errors), unexpected(errors)
