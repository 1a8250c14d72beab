"""Access ends when participation ends (issue 28): whoever leaves, is removed for a media timeout, is removed by
a host, whose meeting ends or whose join token expires keeps nothing. Within 1 s their media sockets close and
their Janus sessions go, so a socket they kept open can neither watch, listen nor publish, and Janus no longer
lists their feed. A host's removal also bars their token from the room until it is reissued. The proxy's limits
count per participant, across all of their media sockets.

Mallory plays the one who means to stay: she joins and publishes as the page does, listens to Ana through the
proxy with aiortc (the arrival of each of Ana's audio frames is recorded), and holds a spare media socket with
a Janus session and two handles of its own, for requests after she is gone. Real Janus, aiortc and Redis; the
gateway in process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import BaseTestServer

from babelroom.janus import JanusConfig
from benchmarks.participant import ScriptedParticipant
from gateway.media.janus import PROTOCOL
from gateway.options import ProxyLimits
from gateway.web.tokens import DEFAULT_TTL_S, issue_token, verify_token
from tests.speech import silence
from tests.test_gateway import SECRET, SpeechTrack, own_server
from tests.test_janus_security import PLUGIN, RawJanus

ROOM = "access"
WITHIN_S = 1.0  # nothing reaches her later than this after her participation ends
WATCH_S = 2.0  # how long after that we watch for anything more
CLOSE_REMOVED, CLOSE_ENDED, CLOSE_EXPIRED = 4001, 4002, 4003


@pytest.fixture
async def gateway(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> AsyncIterator[tuple[BaseTestServer, ClientSession]]:
    async with own_server(redis_url, stream_prefix, janus_config) as (server, http):
        yield server, http


async def enter(
    server: BaseTestServer, name: str, role: str = "participant", ttl_s: float = DEFAULT_TTL_S
) -> ScriptedParticipant:
    """A participant who joins and publishes their microphone, as the page does."""
    person = ScriptedParticipant(str(server.make_url("")).rstrip("/"), ROOM, name, "en", "en")
    await person.join(SpeechTrack(silence(90)), token=issue_token(SECRET, ROOM, name, role, ttl_s))
    await person.wait_for(lambda: own_entry(person).get("feed"), f"{name} publishing")
    return person


def own_entry(person: ScriptedParticipant) -> dict[str, Any]:
    roster = (person.latest("roster") or {}).get("participants", [])
    return next((p for p in roster if p["id"] == person.session.get("id")), {})


@dataclass
class Spare:
    """Mallory's spare media socket: a Janus session and two handles, opened while she was in."""

    socket: ClientWebSocketResponse
    session: int
    handles: tuple[int, int]
    closed_at: float | None = None


async def lurk(http: ClientSession, mallory: ScriptedParticipant, ana: ScriptedParticipant) -> Spare:
    """Mallory listens to Ana's voice and opens her spare socket; returns once Ana's audio reaches her."""
    audio_mid = next(s["mid"] for s in own_entry(ana)["streams"] if s["type"] == "audio")
    await mallory.listen_to(ana.session["feed_id"], [audio_mid])
    await mallory.wait_for(lambda: len(mallory.heard_at) > 25, "Ana's voice reaching Mallory")
    url = f"{mallory.session['janus']}?ticket={mallory.session['ticket']}"
    raw = RawJanus(await http.ws_connect(url, protocols=(PROTOCOL,)))
    await raw.open()
    second = (await raw.ask("attach", plugin=PLUGIN))["data"]["id"]
    return Spare(raw.socket, raw.session, (raw.handle, second))


async def attempt(spare: Spare, handle: int, body: dict[str, Any], transaction: str) -> str:
    """'granted', 'refused', or 'closed': what one VideoRoom request on the spare socket gets."""
    if spare.closed_at is not None:
        return "closed"
    request = {"janus": "message", "transaction": transaction, "session_id": spare.session, "handle_id": handle}
    request["body"] = body
    try:
        await spare.socket.send_json(request)
        while True:
            frame = await spare.socket.receive(timeout=10)
            if frame.type is not WSMsgType.TEXT:
                spare.closed_at = time.time()
                return "closed"
            reply = frame.json()
            if reply.get("transaction") != transaction or reply.get("janus") == "ack":
                continue
            data = reply.get("plugindata", {}).get("data", {})
            return "refused" if reply.get("janus") == "error" or "error_code" in data else "granted"
    except ConnectionError:
        spare.closed_at = spare.closed_at or time.time()
        return "closed"


async def wait_closed(spare: Spare, until: float) -> None:
    while spare.closed_at is None and (left := until - time.time()) > 0:
        try:
            frame = await spare.socket.receive(timeout=left)
        except TimeoutError:
            return
        if frame.type is not WSMsgType.TEXT:
            spare.closed_at = time.time()


async def janus_feeds(janus_config: JanusConfig, http: ClientSession, room_id: int) -> set[int] | None:
    """The publishers Janus lists in the room (asked with the gateway's own secret), or None: no such room."""
    async with http.ws_connect(janus_config.url, protocols=(PROTOCOL,)) as direct:
        janus = RawJanus(direct, apisecret=janus_config.api_secret)
        await janus.open()
        data = (await janus.plugin({"request": "listparticipants", "room": room_id}))["plugindata"]["data"]
        return {p["id"] for p in data["participants"] if p.get("publisher")} if "participants" in data else None


async def keeps_nothing(
    mallory: ScriptedParticipant,
    spare: Spare,
    ana: ScriptedParticipant,
    ended_at: float,
    janus: tuple[JanusConfig, ClientSession],
) -> None:
    """What Mallory has once her participation ended at `ended_at`: nothing at all."""
    assert len([t for t in mallory.heard_at if ended_at - 1.0 < t <= ended_at]) > 10, "control: she heard Ana"
    room_id, feed = mallory.session["room_id"], mallory.session["feed_id"]
    subscribe = {
        "request": "join",
        "ptype": "subscriber",
        "room": room_id,
        "streams": [{"feed": ana.session["feed_id"]}],
    }
    publish = {"request": "join", "ptype": "publisher", "room": room_id, "id": feed}
    outcomes = {
        "subscribe to Ana": await attempt(spare, spare.handles[0], subscribe, "late-sub"),
        "publish": await attempt(spare, spare.handles[1], publish, "late-pub"),
    }
    await wait_closed(spare, ended_at + WITHIN_S)
    await asyncio.sleep(max(0.0, ended_at + WITHIN_S + WATCH_S - time.time()))
    late = [round(t - ended_at, 2) for t in mallory.heard_at if t > ended_at + WITHIN_S]
    print(f"after the end: {outcomes}; spare socket closed after {_after(spare.closed_at, ended_at)}, media socket "
          f"after {_after(mallory.media_closed_at, ended_at)}; last frame of Ana's at "
          f"{_after(max(mallory.heard_at), ended_at)}; frames later than {WITHIN_S} s: {len(late)}")  # fmt: skip
    assert all(outcome in ("refused", "closed") for outcome in outcomes.values()), outcomes
    assert spare.closed_at is not None and spare.closed_at - ended_at <= WITHIN_S, "the spare socket stayed open"
    assert mallory.media_closed_at is not None and mallory.media_closed_at - ended_at <= WITHIN_S, "media socket open"
    assert not late, f"Ana's voice still reached her {late[:5]} s after"
    feeds = await janus_feeds(janus[0], janus[1], room_id)
    assert feeds is None or feed not in feeds, "Janus still lists her feed"


def _after(t: float | None, start: float) -> str:
    return "never" if t is None else f"{t - start:.2f} s"


async def everyone_leaves(*people: ScriptedParticipant) -> None:
    for person in people:
        await person.close()


async def test_a_participant_who_leaves_keeps_no_media_and_no_socket(
    gateway: tuple[BaseTestServer, ClientSession], janus_config: JanusConfig
) -> None:
    server, http = gateway
    ana, mallory = await enter(server, "Ana"), await enter(server, "Mallory")
    try:
        spare = await lurk(http, mallory, ana)
        ended_at = time.time()
        async with http.post(f"/api/sessions/{mallory.session['id']}/leave?ticket={mallory.session['ticket']}") as r:
            assert (await r.json()) == {"left": True}
        await keeps_nothing(mallory, spare, ana, ended_at, (janus_config, http))
    finally:
        await everyone_leaves(ana, mallory)


async def test_a_participant_removed_for_a_media_timeout_keeps_nothing(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    """She stops publishing and keeps listening: removed after the media timeout, she hears nothing more."""
    async with own_server(redis_url, stream_prefix, janus_config, media_timeout_s=1.5) as (server, http):
        ana, mallory = await enter(server, "Ana"), await enter(server, "Mallory")
        try:
            spare = await lurk(http, mallory, ana)
            await mallory.unpublish()
            closed = await mallory.wait_for(lambda: mallory.events_closed, "her removal", timeout_s=10)
            assert "media stopped" in closed[2], closed
            await keeps_nothing(mallory, spare, ana, closed[0], (janus_config, http))
        finally:
            await everyone_leaves(ana, mallory)


async def host_ana_and_mallory(
    server: BaseTestServer,
) -> tuple[ScriptedParticipant, ScriptedParticipant, ScriptedParticipant]:
    return await enter(server, "Hosta", "host"), await enter(server, "Ana"), await enter(server, "Mallory")


async def test_a_host_removes_a_participant_who_keeps_nothing_and_whose_token_is_barred(
    gateway: tuple[BaseTestServer, ClientSession], janus_config: JanusConfig
) -> None:
    server, http = gateway
    host, ana, mallory = await host_ana_and_mallory(server)
    try:
        spare = await lurk(http, mallory, ana)
        ana.send({"type": "remove", "participant": host.session["id"]})  # not a host: refused, nobody removed
        refusal = await ana.wait_for(lambda: ana.latest("error"), "a refusal")
        assert refusal["status"] == 403 and "host" in refusal["error"], refusal
        ended_at = time.time()
        host.send({"type": "remove", "participant": mallory.session["id"]})
        closed = await mallory.wait_for(lambda: mallory.events_closed, "her removal", timeout_s=5)
        assert closed[1] == CLOSE_REMOVED and "Hosta" in closed[2], closed
        assert (mallory.latest("exit") or {}).get("reason") == "removed", mallory.messages[-3:]
        await keeps_nothing(mallory, spare, ana, ended_at, (janus_config, http))
        roster = (host.latest("roster") or {}).get("participants", [])
        assert own_entry(host) and mallory.session["id"] not in [p["id"] for p in roster], "gone from the roster"

        token = issue_token(SECRET, ROOM, "Mallory")  # reissued: she may come back
        barred = {"speak": "en", "hear": "en", "token": mallory.token}
        async with http.post(f"/api/rooms/{ROOM}/join", json=barred) as response:
            assert response.status == 403 and "removed" in (await response.json())["error"]
        async with http.post(f"/api/rooms/{ROOM}/join", json={**barred, "token": token}) as response:
            assert response.status == 200, await response.text()
            again = await response.json()
        await http.post(f"/api/sessions/{again['id']}/leave?ticket={again['ticket']}")
    finally:
        await everyone_leaves(host, ana, mallory)


async def test_a_host_ends_the_meeting_for_everyone_and_the_janus_room_is_destroyed(
    gateway: tuple[BaseTestServer, ClientSession], janus_config: JanusConfig
) -> None:
    server, http = gateway
    host, ana, mallory = await host_ana_and_mallory(server)
    try:
        spare = await lurk(http, mallory, ana)
        ended_at = time.time()
        host.send({"type": "end"})
        for person in (host, ana, mallory):
            closed = await person.wait_for(lambda p=person: p.events_closed, f"{person.name}'s end", timeout_s=5)
            assert closed[1] == CLOSE_ENDED, closed
            assert (person.latest("exit") or {}).get("reason") == "ended"
        await keeps_nothing(mallory, spare, ana, ended_at, (janus_config, http))
        assert await janus_feeds(janus_config, http, mallory.session["room_id"]) is None, "the Janus room is gone"
        async with http.get(f"/api/rooms/{ROOM}?token={issue_token(SECRET, ROOM, 'x')}") as response:
            assert response.status == 404
    finally:
        await everyone_leaves(host, ana, mallory)


async def test_a_session_ends_with_its_token(
    gateway: tuple[BaseTestServer, ClientSession], janus_config: JanusConfig
) -> None:
    server, http = gateway
    ana = await enter(server, "Ana")
    mallory = await enter(server, "Mallory", ttl_s=8.0)
    try:
        spare = await lurk(http, mallory, ana)
        expires_at = verify_token(SECRET, mallory.token, ROOM).expires_at
        assert time.time() < expires_at - 1, "the test took too long to set up"
        closed = await mallory.wait_for(lambda: mallory.events_closed, "her token's end", timeout_s=15)
        print(f"the session ended {closed[0] - expires_at:.2f} s after its token")
        assert closed[1] == CLOSE_EXPIRED and closed[0] - expires_at <= 1.0 + WITHIN_S, closed
        await keeps_nothing(mallory, spare, ana, expires_at + 1.0, (janus_config, http))
    finally:
        await everyone_leaves(ana, mallory)


async def seat(http: ClientSession, name: str) -> dict[str, Any]:
    body = {"speak": "en", "hear": "en", "token": issue_token(SECRET, ROOM, name)}
    async with http.post(f"/api/rooms/{ROOM}/join", json=body) as response:
        return dict(await response.json())


async def test_the_proxy_limits_count_per_participant_across_all_sockets(
    gateway: tuple[BaseTestServer, ClientSession],
) -> None:
    """Sessions and sockets are capped per participant, not per connection; twelve `create`s under one
    transaction id make no more sessions than the cap."""
    _, http = gateway
    limits = ProxyLimits()
    mallory, eve = await seat(http, "Mallory"), await seat(http, "Eve")
    url = f"{mallory['janus']}?ticket={mallory['ticket']}"
    sockets = [await http.ws_connect(url, protocols=(PROTOCOL,)) for _ in range(limits.sockets)]
    try:
        with pytest.raises(WSServerHandshakeError) as too_many:
            await http.ws_connect(url, protocols=(PROTOCOL,))
        assert too_many.value.status == 429
        created = 0
        for i in range(limits.sessions + 4):  # spread over her sockets
            reply = await RawJanus(sockets[i % len(sockets)]).ask("create")
            created += reply["janus"] == "success"
        assert created == limits.sessions, f"{created} sessions over {len(sockets)} sockets"

        socket = await http.ws_connect(f"{eve['janus']}?ticket={eve['ticket']}", protocols=(PROTOCOL,))
        sockets.append(socket)
        for _ in range(12):  # one transaction id, again and again, before Janus answers
            await socket.send_json({"janus": "create", "transaction": "same"})
        replies = [await socket.receive_json(timeout=5) for _ in range(12)]
        made = sum(r["janus"] == "success" for r in replies)
        print(f"12 creates under one transaction id: {made} sessions")
        assert made <= limits.sessions and all(r["janus"] in ("success", "error") for r in replies), replies
    finally:
        for socket in sockets:
            await socket.close()
        for person in (mallory, eve):
            await http.post(f"/api/sessions/{person['id']}/leave?ticket={person['ticket']}")
