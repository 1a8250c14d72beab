"""The meeting's transcript (gateway/rooms/transcript.py) against a real redis-server, and through the gateway
over real HTTP with a real Janus and aiortc participants (the test plays the workers on the bus).

Shows: off by default (results of a meeting nobody turned it on for leave no key, and the API answers 404); a
host turns it on from the events socket and every page, a later joiner's too, is told who did; a participant
may not where tokens are required; finals only, in every listening language, as VTT, SRT and text, in one
language or all; off stops it; the byte cap stops utterances with a notice and a note in every download; it
survives a new gateway on the same Redis; only the room's people read it (another room's session 403; an
expired token, another room's token, or nothing: 401); after the room ends and the retention passes, it is
gone and the API answers 404.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import srt
import webvtt
from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer

from babelroom.janus import JanusConfig
from benchmarks.participant import ScriptedParticipant
from gateway.media.playout import PlayoutOptions
from gateway.options import TranscriptOptions
from gateway.rooms.room import Participant, Profile, Room
from gateway.rooms.transcript import LEASE_S, TranscriptRefused, Transcripts
from gateway.web.health import GATEWAY_KEY
from gateway.web.tokens import issue_token
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import InterimTranscript, Transcript, Translation
from tests.speech import silence
from tests.test_gateway import SECRET, SpeechTrack, own_server

ROOM = "board"


def room_with(*people: tuple[str, str, str, str]) -> tuple[Room, list[Participant]]:
    """A room of (id, name, speaks, hears) participants; the first is the host."""
    room = Room(ROOM, PlayoutOptions(0.1, 15.0, 4.0))
    joined = []
    for i, (pid, name, speak, hear) in enumerate(people):
        participant = Participant(pid, ROOM, Profile(name, speak, hear, role="host" if i == 0 else "participant"))
        room.add(participant)
        joined.append(participant)
    return room, joined


def said(speaker: str, seq: int, text: str, at: float, language: str = "en", seconds: float = 2.0) -> Transcript:
    return Transcript(room=ROOM, speaker=speaker, seq=seq, stamps=(("captured", at),), language=language,
                      targets=("es", "ca"), text=text, end_sample=round(seconds * 16_000))  # fmt: skip


def translated(speaker: str, seq: int, language: str, text: str, source: str = "en") -> Translation:
    return Translation(room=ROOM, speaker=speaker, seq=seq, source_language=source, language=language, text=text)


def notices(participant: Participant) -> list[dict[str, Any]]:
    """The transcript notices sent to `participant` since the last call."""
    out = []
    while not participant.outbox.empty():
        message = json.loads(participant.outbox.get_nowait())
        if message["type"] == "transcript":
            out.append(message)
    return out


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    yield bus
    await bus.close()


async def test_off_by_default_nothing_is_kept(bus: Bus) -> None:
    room, (ana, _) = room_with(("a", "Ana", "en", "en"), ("b", "Ben", "es", "es"))
    transcripts = Transcripts(bus, TranscriptOptions(), {ROOM: room}, tokens_required=True)
    assert await transcripts.record(said("a", 0, "the house is big", time.time())) == "off"
    assert await transcripts.record(translated("a", 0, "es", "la casa es grande")) == "orphan"
    await transcripts.turn(ana, on=False)  # turning off what was never on creates nothing
    await transcripts.opened(ROOM)
    await transcripts.ended(ROOM)
    assert [key async for key in bus.client.scan_iter(match=f"{bus.options.prefix}:*")] == []
    assert await transcripts.export(ROOM, "es", "vtt") is None


async def test_a_host_turns_it_on_and_every_final_is_kept_in_every_language(bus: Bus) -> None:
    room, (ana, ben, cai) = room_with(("a", "Ana", "en", "en"), ("b", "Ben", "es", "es"), ("c", "Cai", "ca", "ca"))
    transcripts = Transcripts(bus, TranscriptOptions(), {ROOM: room}, tokens_required=True)
    with pytest.raises(TranscriptRefused, match="only a host"):
        await transcripts.turn(ben, on=True)
    state = await transcripts.turn(ana, on=True)
    assert state.on and state.by == "Ana"
    for person in (ana, ben, cai):
        [notice] = notices(person)
        assert notice["on"] and notice["by"] == "Ana" and "turned on by Ana" in notice["message"]
        assert notice["can_toggle"] is (person is ana)

    start = room.opened_at
    transcripts.offer(InterimTranscript(room=ROOM, speaker="a", seq=0, language="en", text="the hou"))  # not kept
    assert await transcripts.record(said("a", 0, 'the house is "big" & <old>', start + 5.0)) == "kept"
    assert await transcripts.record(said("a", 0, 'the house is "big" & <old>', start + 5.0)) == "known"
    for language, words in (("es", "la casa es grande"), ("ca", "la casa és gran")):
        assert await transcripts.record(translated("a", 0, language, words)) == "kept"
    assert await transcripts.record(said("b", 0, "el gato es negro", start + 9.0, "es", 1.5)) == "kept"
    assert await transcripts.record(translated("b", 0, "en", "the cat is black", "es")) == "kept"  # no ca: none then

    vtt = await transcripts.export(ROOM, "es", "vtt")
    assert vtt is not None and vtt.content_type == "text/vtt" and vtt.filename == f"{ROOM}-transcript-es.vtt"
    cues = webvtt.from_string(vtt.body, strict=True).captions
    assert [(c.voice, c.text, c.start, c.end) for c in cues] == [
        ("Ana", "la casa es grande", "00:00:03.000", "00:00:05.000"),
        ("Ben", "el gato es negro", "00:00:07.500", "00:00:09.000"),
    ]
    txt = await transcripts.export(ROOM, "en", "txt")
    assert txt is not None and txt.body == (
        '[00:00:03] Ana: the house is "big" & <old>\n\n[00:00:07] Ben: the cat is black\n'
    )
    srt_file = await transcripts.export(ROOM, "ca", "srt")
    assert srt_file is not None
    assert [s.content for s in srt.parse(srt_file.body)] == ["Ana: la casa és gran", "Ben: [es] el gato es negro"]
    every = await transcripts.export(ROOM, "all", "txt")
    assert every is not None and every.body.split("\n\n")[0] == (
        '[00:00:03] Ana: [en] the house is "big" & <old>\n    [ca] la casa és gran\n    [es] la casa es grande'
    )

    await transcripts.turn(ana, on=False)
    assert [n["on"] for n in notices(ben)] == [False]
    assert await transcripts.record(said("a", 1, "this is not recorded", start + 12.0)) == "off"
    assert await transcripts.record(translated("b", 0, "ca", "el gat és negre", "es")) == "kept"  # said while on


async def test_the_byte_cap_stops_utterances_and_says_so(bus: Bus) -> None:
    room, (ana, ben) = room_with(("a", "Ana", "en", "en"), ("b", "Ben", "es", "es"))
    transcripts = Transcripts(bus, TranscriptOptions(max_bytes=600), {ROOM: room}, tokens_required=False)
    await transcripts.turn(ben, on=True)  # open rooms: anyone in the room may
    outcomes = [await transcripts.record(said("a", seq, "word " * 20, room.opened_at + seq)) for seq in range(6)]
    kept = outcomes.index("full_now")  # about 200 bytes each
    assert kept >= 2 and outcomes[:kept] == ["kept"] * kept and set(outcomes[kept + 1 :]) == {"full"}, outcomes
    assert await transcripts.record(translated("a", 1, "es", "palabra " * 20)) == "kept"  # of one already kept
    full = [n for n in notices(ana) if n["full"]]
    assert len(full) == 1 and "not recorded" in full[0]["message"]
    for fmt in ("vtt", "srt", "txt"):
        export = await transcripts.export(ROOM, "es", fmt)
        assert export is not None and export.full and "limit of 600 bytes at 00:00:00" in export.body
    vtt = await transcripts.export(ROOM, "es", "vtt")
    assert vtt is not None and len(webvtt.from_string(vtt.body, strict=True).captions) == kept
    assert int(await bus.client.hget(transcripts.key(ROOM), "state:bytes") or 0) <= 600 + 200


async def test_it_outlives_the_gateway_and_goes_when_the_retention_after_the_room_ends(
    redis_url: str, stream_prefix: str
) -> None:
    room, (ana, _) = room_with(("a", "Ana", "en", "en"), ("b", "Ben", "es", "es"))
    options = TranscriptOptions(retention_s=1.0)
    first = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    transcripts = Transcripts(first, options, {ROOM: room}, tokens_required=True)
    await transcripts.turn(ana, on=True)
    await transcripts.record(said("a", 0, "the house is big", room.opened_at + 4.0))
    await transcripts.ended(ROOM)  # the gateway stops: its rooms end
    await first.close()

    # a new gateway (another node, or this one restarted): the room opens again later, and goes on recording
    again, (ana2, _) = room_with(("a2", "Ana", "en", "en"), ("b2", "Ben", "es", "es"))
    second = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    try:
        transcripts = Transcripts(second, options, {ROOM: again}, tokens_required=True)
        await transcripts.opened(ROOM)
        key = transcripts.key(ROOM)
        assert await second.client.pttl(key) > (options.retention_s + LEASE_S - 5) * 1000, "kept while open"
        await transcripts.greet(ana2)
        assert notices(ana2)[0]["on"], "a page that joins again learns it is still on"
        assert await transcripts.record(said("a2", 0, "the garden is green", again.opened_at + 8.0)) == "kept"
        export = await transcripts.export(ROOM, "en", "txt")  # times count from the meeting's first start
        assert export is not None
        assert export.body == "[00:00:02] Ana: the house is big\n\n[00:00:06] Ana: the garden is green\n"
        await transcripts.ended(ROOM)
        await asyncio.sleep(options.retention_s + 0.5)
        assert await second.client.exists(key) == 0
        assert await transcripts.export(ROOM, "en", "txt") is None
    finally:
        await second.close()


# -- through the gateway: the events socket and the API ---------------------------------------------------------
async def enter(server: BaseTestServer, room: str, name: str, speak: str, hear: str, token: str = "") -> Any:
    person = ScriptedParticipant(str(server.make_url("")).rstrip("/"), room, name, speak, hear)
    await person.join(SpeechTrack(silence(60)), token=token)
    await person.wait_for(lambda: person.latest("transcript"), f"{name}'s transcript state")
    return person


async def get(http: ClientSession, path: str) -> tuple[int, str]:
    async with http.get(path) as response:
        return response.status, await response.text()


async def leave(http: ClientSession, *people: ScriptedParticipant) -> None:
    for person in people:
        session = person.session
        async with http.post(f"/api/sessions/{session['id']}/leave?ticket={session['ticket']}") as response:
            assert response.status == 200
        await person.close()


def transcript_url(room: str, fmt: str = "vtt", lang: str = "es", **credentials: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"lang": lang, "format": fmt, **credentials}.items())
    return f"/api/rooms/{room}/transcript?{query}"


async def test_through_the_gateway_with_tokens(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> None:
    retention = 1.0
    options = {"transcript": TranscriptOptions(retention_s=retention)}
    async with own_server(redis_url, stream_prefix, janus_config, **options) as (server, http):
        host = issue_token(SECRET, ROOM, "Ana", role="host")
        ana = await enter(server, ROOM, "Ana", "en", "en", host)
        ben = await enter(server, ROOM, "Ben", "es", "es", issue_token(SECRET, ROOM, "Ben"))
        zed = await enter(server, "other", "Zed", "es", "es", issue_token(SECRET, "other", "Zed"))
        people: list[ScriptedParticipant] = [ana, ben, zed]
        try:
            assert not ana.latest("transcript")["on"] and ana.latest("transcript")["can_toggle"]
            assert not ben.latest("transcript")["can_toggle"], "a participant's page offers no switch"
            status, _ = await get(http, transcript_url(ROOM, token=host))
            assert status == 404, "off by default: no transcript"
            ben.send({"type": "transcript", "on": True})
            refused = await ben.wait_for(lambda: ben.latest("error"), "Ben's refusal")
            assert "only a host" in refused["error"]
            ana.send({"type": "transcript", "on": True})
            notice = await ben.wait_for(lambda: (ben.latest("transcript") or {}).get("on") and ben.latest("transcript"),
                                        "Ben sees it is on")  # fmt: skip
            assert notice["by"] == "Ana" and "turned on by Ana" in notice["message"]
            assert not zed.latest("transcript")["on"], "another room's transcript is its own"
            cai = await enter(server, ROOM, "Cai", "es", "es", issue_token(SECRET, ROOM, "Cai"))
            people.append(cai)
            assert cai.latest("transcript")["on"] and cai.latest("transcript")["by"] == "Ana", "a later joiner"

            results = server.app[GATEWAY_KEY].bus
            now = time.time()
            base: dict[str, Any] = {"room": ROOM, "speaker": ana.session["id"], "seq": 0}
            await results.publish(InterimTranscript(**base, language="en", text="the house"))
            await results.publish(Transcript(**base, stamps=(("captured", now),), language="en", targets=("es",),
                                             text="the house is big", end_sample=32_000))  # fmt: skip
            await results.publish(Translation(**base, source_language="en", language="es", text="la casa es grande"))
            await ben.wait_for(lambda: ben.captions(final=True, lang="es"), "Ben's caption")
            await asyncio.sleep(0.3)  # the transcript's writer follows the captions

            session = {"session": ben.session["id"], "ticket": ben.session["ticket"]}
            status, body = await get(http, transcript_url(ROOM, **session))
            assert status == 200, body
            [cue] = webvtt.from_string(body, strict=True).captions
            assert (cue.voice, cue.text) == ("Ana", "la casa es grande")
            status, body = await get(http, transcript_url(ROOM, fmt="txt", lang="en", token=host))
            assert status == 200 and body.endswith("] Ana: the house is big\n")
            status, body = await get(http, transcript_url(ROOM, fmt="doc", **session))
            assert status == 400 and "vtt, srt, txt" in body

            expired = issue_token(SECRET, ROOM, "Ben", ttl_s=0.001)
            await asyncio.sleep(0.01)
            zed_session = {"session": zed.session["id"], "ticket": zed.session["ticket"]}
            refusals = [
                (transcript_url(ROOM, **zed_session), 403, "another room"),
                (transcript_url(ROOM, token=issue_token(SECRET, "other", "Zed")), 401, "not 'board'"),
                (transcript_url(ROOM, token=expired), 401, "expired"),
                (transcript_url(ROOM), 401, "required"),
                (transcript_url(ROOM, session=ben.session["id"], ticket="wrong"), 401, "wrong ticket"),
            ]
            for url, expected, reason in refusals:
                status, body = await get(http, url)
                assert status == expected and reason in body and "casa" not in body, (url, status, body)

            await leave(http, *people)
            people = []
            await asyncio.sleep(retention + 0.5)
            status, body = await get(http, transcript_url(ROOM, token=host))
            assert status == 404, "gone once the retention after the meeting passed"
            assert [k async for k in results.client.scan_iter(match=f"{stream_prefix}:transcript:*")] == []
        finally:
            for person in people:
                await person.close()


async def test_open_rooms_still_keep_it_to_the_rooms_people(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    async with own_server(redis_url, stream_prefix, janus_config, open_rooms=True) as (server, http):
        ana = await enter(server, ROOM, "Ana", "en", "en")
        zed = await enter(server, "other", "Zed", "es", "es")
        try:
            assert ana.latest("transcript")["can_toggle"], "in an open room anyone may turn it on"
            ana.send({"type": "transcript", "on": True})
            await ana.wait_for(lambda: (ana.latest("transcript") or {}).get("on"), "on")
            mine = {"session": ana.session["id"], "ticket": ana.session["ticket"]}
            assert (await get(http, transcript_url(ROOM, **mine)))[0] == 200
            status, _ = await get(http, transcript_url(ROOM, session=zed.session["id"], ticket=zed.session["ticket"]))
            assert status == 403
            assert (await get(http, transcript_url(ROOM)))[0] == 401
            assert (await get(http, transcript_url("other", session=zed.session["id"], ticket=zed.session["ticket"])))[
                0
            ] == 404, "the other room never turned it on"
        finally:
            await leave(http, ana, zed)
