"""The gateway over real HTTP, a real Janus, real aiortc participants and a real Redis bus (no workers:
the test plays them).

Shows: a participant's speech travels browser -> Janus -> the gateway's subscriber -> the `asr` stream
as a SpeechSegment for the listeners' languages; results published on the bus come back as captions in
each listener's language and as translated audio on their language's feed in Janus, never to the
speaker; input validation answers 4xx with a clear JSON message while a connected session carries on;
the floor button works over the events socket; a session whose media never connects, or stops, is removed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import html
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import BaseTestServer, TestServer
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame, VideoFrame

from babelroom.janus import JanusConfig
from benchmarks.participant import ScriptedParticipant
from gateway.options import GatewayOptions, JanusOptions, TurnOptions
from gateway.validation import ROOM_NAME_RULE
from gateway.web.app import create_app
from gateway.web.health import GATEWAY_KEY
from gateway.web.tokens import issue_token, verify_token
from pipeline.audio import float_to_pcm16, resample
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.frames import frames_key, make_clip
from pipeline.messages import (
    InterimRequest,
    InterimTranscript,
    InterimTranslation,
    SpeechSegment,
    SynthesizedSpeech,
    Transcript,
    Translation,
)
from tests.speech import espeak, silence

SECRET = "test-secret"
ROOM = "standup"
WAIT_S = 20.0


class SpeechTrack(MediaStreamTrack):
    """A microphone that says something once, then stays silent: 20 ms stereo s16 frames at 48 kHz."""

    kind = "audio"

    def __init__(self, samples_16k: np.ndarray) -> None:
        super().__init__()
        self._audio = resample(samples_16k, 16_000, 48_000)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        self._start = self._start or time.monotonic()
        wait = self._start + self._pts / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._audio[self._pts : self._pts + 960]
        chunk = np.pad(chunk, (0, 960 - chunk.size))
        stereo = np.frombuffer(float_to_pcm16(np.repeat(chunk, 2)), dtype="<i2").reshape(1, -1)
        frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self._pts, fractions.Fraction(1, 48_000)
        self._pts += 960
        return frame


def gateway_options(janus_config: JanusConfig, **overrides: Any) -> GatewayOptions:
    janus = JanusOptions(janus_config.url, janus_config.api_secret, janus_config.admin_key)
    return GatewayOptions(token_secret=SECRET, playout_delay_s=0.1, janus=janus, **overrides)


@pytest.fixture
async def server(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> AsyncIterator[BaseTestServer]:
    app = create_app(Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix)), gateway_options(janus_config))
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def wait_for_janus(http: ClientSession) -> None:
    """The gateway connects to Janus in the background as it starts."""
    for _ in range(200):
        async with http.get("/healthz") as response:
            if (await response.json()).get("janus") == "connected":
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not connect to Janus")


@pytest.fixture
async def http(server: BaseTestServer) -> AsyncIterator[ClientSession]:
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        await wait_for_janus(session)
        yield session


class ColorCamera(MediaStreamTrack):
    """A 320x240 camera showing one solid colour, at 15 fps."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        super().__init__()
        self._image = np.full((240, 320, 3), rgb, dtype=np.uint8)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        self._start = self._start or time.monotonic()
        wait = self._start + self._pts / 90_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = VideoFrame.from_ndarray(self._image, format="rgb24")
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90_000)
        self._pts += 6_000
        return frame


async def join(
    server: BaseTestServer,
    name: str,
    speak: str,
    hear: str,
    mic: MediaStreamTrack,
    camera: MediaStreamTrack | None = None,
    **toggles: bool,
) -> ScriptedParticipant:
    person = ScriptedParticipant(str(server.make_url("")).rstrip("/"), ROOM, name, speak, hear)
    await person.join(mic, token=issue_token(SECRET, ROOM, name), options=toggles, camera=camera)
    return person


def speech_then_silence() -> np.ndarray:
    return np.concatenate([silence(0.5), espeak("the house is big and the dog is black"), silence(30)])


async def first_segment(bus: Bus, timeout_s: float = WAIT_S) -> SpeechSegment:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for delivery in await bus.tail("asr", "0-0", count=10, block_ms=200):
            assert isinstance(delivery.message, SpeechSegment)
            return delivery.message
    raise AssertionError("no speech segment reached the asr stream")


async def test_speech_becomes_segments_and_results_become_captions_and_translated_audio(
    server: BaseTestServer, http: ClientSession, bus: Bus
) -> None:
    ana = await join(server, "Ana", "es", "es", SpeechTrack(silence(60)))
    bob = await join(server, "Bob", "en", "en", SpeechTrack(speech_then_silence()), match_voice=True)
    try:
        await ana.listen_to_translation()
        await ana.wait_for(lambda: len((ana.latest("roster") or {}).get("participants", [])) == 2, "the roster")
        assert set(ana.feeds()) == {"es", "en"}, "one feed per listening language that someone needs"

        segment = await first_segment(bus)
        assert (segment.room, segment.speaker, segment.language, segment.targets) == (
            ROOM,
            bob.session["id"],
            "en",
            ("es",),
        )
        assert 1.0 < segment.duration_s < 4.0 and segment.stamp("captured") is not None
        assert segment.match_voice  # Bob opted in to pitch matching
        assert abs((segment.stamp("captured") or 0.0) - time.time()) < 5.0

        base: dict[str, Any] = {
            "room": ROOM,
            "speaker": bob.session["id"],
            "seq": segment.seq,
            "stamps": segment.stamps,
        }
        await bus.publish(Transcript(**base, language="en", targets=("es",), text="the house is big"))
        await ana.wait_for(lambda: ana.captions(final=False, lang="es"), "an interim caption at Ana")
        await bus.publish(Translation(**base, source_language="en", language="es", source_text="the house is big",
                                      text="la casa es grande"))  # fmt: skip
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)
        await bus.publish(SynthesizedSpeech(**base, language="es", text="la casa es grande", pcm=float_to_pcm16(tone)))

        await ana.wait_for(lambda: ana.captions(final=True, lang="es"), "a final Spanish caption at Ana")
        final = ana.captions(final=True, lang="es")[0]
        assert (final["text"], final["original"], final["speaker"]) == ("la casa es grande", "the house is big", "Bob")
        await ana.wait_for(lambda: ana.translated_peak > 0.1, "translated speech on Ana's feed", timeout_s=10)
        assert bob.captions(lang="en", final=True), "the speaker sees their own words"
        assert not bob.captions(lang="es"), "the speaker never receives their own translation"
    finally:
        await bob.close()
        await ana.close()


async def all_interim_requests(bus: Bus) -> list[InterimRequest]:
    requests: list[InterimRequest] = []
    last_id: bytes | str = "0-0"
    while deliveries := await bus.tail("asr_interim", last_id, count=100):
        last_id = deliveries[-1].entry_id
        requests += [d.message for d in deliveries if isinstance(d.message, InterimRequest)]
    return requests


async def test_the_floor_holder_gets_interim_captions_that_the_final_replaces(
    server: BaseTestServer, http: ClientSession, bus: Bus
) -> None:
    ana = await join(server, "Ana", "es", "es", SpeechTrack(silence(60)))
    words = "the house is big and the dog is black and the garden is green and very large"
    bob = await join(server, "Bob", "en", "en", SpeechTrack(np.concatenate([silence(0.5), espeak(words), silence(30)])))
    try:
        first = await first_interim_request(bus)
        base: dict[str, Any] = {"room": ROOM, "speaker": bob.session["id"], "seq": first.seq, "stamps": first.stamps}
        # the workers' answers to the first request, while Bob still speaks
        draft = InterimTranscript(**base, revision=first.revision, language="en", text="the house", committed="the")
        await bus.publish(draft)
        await bus.publish(InterimTranslation(**base, revision=first.revision, language="es", source_language="en",
                                             source_text="the house", text="la casa"))  # fmt: skip
        shown = await ana.wait_for(lambda: ana.captions(final=False, lang="es", text="la casa"), "Ana's interim")
        assert shown[0]["seq"] == first.seq and shown[0]["original"] == "the house"
        await bob.wait_for(lambda: bob.captions(final=False, lang="en", text="the house"), "Bob's own interim")

        segment = await first_segment(bus)
        requests = await all_interim_requests(bus)
        assert len(requests) >= 3, "one request every INTERVAL_S while Bob speaks"
        assert {r.seq for r in requests} == {segment.seq}, "interim and final share the seq allocated at speech start"
        assert [r.revision for r in requests] == sorted({r.revision for r in requests})
        assert all(r.targets == ("es",) and r.start_sample == segment.start_sample for r in requests)
        assert all(0 < r.end_sample <= segment.end_sample and r.pcm for r in requests)
        assert requests[-1].committed == "the" and requests[-1].previous == "the house", "the tracker's state"
        assert segment.committed == "", "the final decodes the whole segment afresh (the default)"

        late = {**base, "revision": requests[-1].revision + 1}  # answers a request after the segment closed
        await bus.publish(InterimTranslation(**late, language="es", source_language="en", text="tarde"))
        await bus.publish(Translation(**base, source_language="en", language="es", source_text=words, text="final"))
        await ana.wait_for(lambda: ana.captions(final=True, lang="es"), "Ana's final caption")
        assert not ana.captions(text="tarde"), "an interim result for a closed segment is never shown"
        assert ana.captions(final=True, lang="es")[0]["id"] == shown[0]["id"], "the final replaces the interims"
    finally:
        await bob.close()
        await ana.close()


async def first_interim_request(bus: Bus, timeout_s: float = WAIT_S) -> InterimRequest:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for delivery in await bus.tail("asr_interim", "0-0", count=1, block_ms=100):
            assert isinstance(delivery.message, InterimRequest)
            return delivery.message
    raise AssertionError("no interim request reached the asr_interim stream")


@pytest.mark.parametrize("consent", [True, False])
async def test_a_consenting_speakers_face_plays_on_the_feed_while_their_translation_does(
    server: BaseTestServer, http: ClientSession, bus: Bus, consent: bool
) -> None:
    ana = await join(server, "Ana", "es", "es", SpeechTrack(silence(60)), lipsync=True)
    speech = np.concatenate([silence(3.0), espeak("the house is big"), silence(30)])
    bob = await join(server, "Bob", "en", "en", SpeechTrack(speech), ColorCamera((220, 30, 30)), face_consent=consent)
    try:
        await ana.listen_to_translation()
        segment = await first_segment(bus)
        base: dict[str, Any] = {
            "room": ROOM,
            "speaker": bob.session["id"],
            "seq": segment.seq,
            "stamps": segment.stamps,
        }
        await asyncio.sleep(1.0)  # the gateway encodes and stores the frames in the background
        stored = await bus.client.get(frames_key(bus.options.prefix, ROOM, bob.session["id"], segment.seq))
        assert segment.has_frames is consent and (stored is not None) is consent, "frames go out only with consent"
        if consent:  # the lipsync worker's part, scripted here (its own tests run the real one): a green clip
            green = [np.full((240, 320, 3), (30, 200, 60), dtype=np.uint8)] * 30
            clip = make_clip(ROOM, bob.session["id"], segment.seq, green, [i / 15 for i in range(30)], language="es")
            await bus.publish(clip)
            await asyncio.sleep(0.5)  # decoded in the gateway before the speech comes
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(32_000) / 16_000)
        await bus.publish(SynthesizedSpeech(**base, language="es", text="la casa", pcm=float_to_pcm16(tone)))
        notice = await ana.wait_for(
            lambda: [m for m in ana.messages if m["type"] == "playout" and m["playing"]], "playout"
        )
        assert notice[0]["speaker_id"] == bob.session["id"] and notice[0]["video"] is consent
        await asyncio.sleep(2.5)  # the 2 s translation plays out
        if not consent:
            assert ana.translated_frames == [], "without consent no frame of Bob's leaves the gateway"
            return
        assert len(ana.translated_frames) >= 10, "the feed shows Bob's face while his translation plays"
        red, green, blue = np.median([frame.reshape(-1, 3).mean(axis=0) for _, frame in ana.translated_frames], axis=0)
        assert green > 150 and red < 90 and blue < 120, ("the lip-synced frames play", red, green, blue)
        counts = server.app[GATEWAY_KEY].video_counts()
        assert counts["lipsynced"] == 1 and counts["original"] == 0 and counts["stored"] == 1, counts
        playing_from = ana.message_times[ana.messages.index(notice[0])]
        assert abs(ana.translated_frames[0][0] - playing_from) < 1.0, "the face comes with the speech"
    finally:
        await bob.close()
        await ana.close()


async def test_bad_requests_get_a_clear_4xx_and_the_connected_session_carries_on(
    server: BaseTestServer, http: ClientSession, bus: Bus
) -> None:
    ana = await join(server, "Ana", "es", "es", SpeechTrack(silence(60)))
    good = {"speak": "en", "hear": "es"}
    expired = issue_token(SECRET, ROOM, "Eve", ttl_s=0.001)
    await asyncio.sleep(0.01)
    cases: list[tuple[dict[str, Any] | bytes, int, str]] = [
        ({**good, "token": issue_token("not the secret", ROOM, "Eve")}, 401, "signature"),
        ({**good, "token": "forged.token"}, 401, "malformed"),
        ({**good, "token": expired}, 401, "expired"),
        ({**good}, 401, "required"),
        ({**good, "token": issue_token(SECRET, "elsewhere", "Eve")}, 401, "room"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "speak": "xx"}, 400, "unknown language code 'xx'"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "hear": "klingon"}, 400, "unknown language"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "options": ["x"]}, 400, "options"),
        (b"{not json", 400, "not valid JSON"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "pad": "x" * 200_000}, 413, "too large"),
    ]
    try:
        for body, status, message in cases:
            kwargs: dict[str, Any] = {"data": body, "headers": {"Content-Type": "application/json"}} \
                if isinstance(body, bytes) else {"json": body}  # fmt: skip
            async with http.post(f"/api/rooms/{ROOM}/join", **kwargs) as response:
                reply = await response.json()
                assert response.status == status, (message, reply)
                assert message in reply["error"], reply
        async with http.get(f"/room/{ROOM}?token={issue_token('x', ROOM, 'Eve')}") as response:
            assert response.status == 401 and "signature" in await response.text()
        async with http.post("/api/rooms/bad room!/join", json=good) as response:
            assert response.status == 400 and "room name" in (await response.json())["error"]
        for socket in ("events", "janus"):
            with pytest.raises(WSServerHandshakeError) as refused:
                await http.ws_connect(f"/api/sessions/{ana.session['id']}/{socket}?ticket=wrong")
            assert refused.value.status == 401
        async with http.get(f"/api/sessions/{ana.session['id']}/janus?ticket=wrong") as response:
            assert response.status == 401

        # Ana's session is untouched: still in the room, and still gets what is published for her.
        async with http.get(f"/api/rooms/{ROOM}?token={issue_token(SECRET, ROOM, 'Eve')}") as response:
            assert [p["name"] for p in (await response.json())["participants"]] == ["Ana"]
        base: dict[str, Any] = {"room": ROOM, "speaker": "someone", "seq": 0}
        await bus.publish(Translation(**base, source_language="en", language="es", source_text="hi", text="hola"))
        await ana.wait_for(lambda: ana.captions(final=True, lang="es", text="hola"), "Ana's caption")
    finally:
        await ana.close()


async def test_the_floor_button_asks_for_the_floor_queues_and_gives_it_up(
    server: BaseTestServer, http: ClientSession
) -> None:
    ana = await join(server, "Ana", "es", "es", SpeechTrack(silence(60)))
    bob = await join(server, "Bob", "en", "en", SpeechTrack(silence(60)))

    def floor_is(holder: ScriptedParticipant | None, queue: list[ScriptedParticipant]) -> Any:
        def check() -> bool:
            floor = bob.latest("floor")
            return (
                floor is not None
                and floor["holder"] == (holder.session["id"] if holder else None)
                and floor["queue_ids"] == [p.session["id"] for p in queue]
            )

        return check

    try:
        ana.send({"type": "floor", "action": "request"})
        await bob.wait_for(floor_is(ana, []), "Ana granted the floor")
        bob.send({"type": "floor", "action": "request"})
        await bob.wait_for(floor_is(ana, [bob]), "Bob queued behind Ana")
        ana.send({"type": "floor", "action": "release"})
        await bob.wait_for(floor_is(bob, []), "the floor passed to Bob")
        bob.send({"type": "floor", "action": "grab"})
        await bob.wait_for(lambda: any(m["type"] == "error" and "grab" in m["error"] for m in bob.messages), "an error")
    finally:
        for person in (ana, bob):
            await person.close()


@contextlib.asynccontextmanager
async def own_server(
    redis_url: str, prefix: str, janus_config: JanusConfig, **overrides: Any
) -> AsyncIterator[tuple[BaseTestServer, ClientSession]]:
    """A gateway of its own with the given options (e.g. a short media timeout), connected to Janus, and a client."""
    options = gateway_options(janus_config, **overrides)
    app = create_app(Bus.connect(BusOptions(redis_url=redis_url, prefix=prefix)), options)
    async with TestServer(app, host="127.0.0.1") as server, ClientSession(base_url=str(server.make_url(""))) as http:
        await wait_for_janus(http)
        yield server, http


async def room_state_after(http: ClientSession, state_url: str, timeout_s: float) -> int:
    """The room state's status once it is no longer 200 (the room emptied), or 200 after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    status = 200
    while status == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        async with http.get(state_url) as response:
            status = response.status
    return status


async def test_a_join_whose_media_never_connects_is_removed(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    async with own_server(redis_url, f"{stream_prefix}g", janus_config, media_timeout_s=1.0) as (_, http):
        body = {"speak": "en", "hear": "en", "token": issue_token(SECRET, ROOM, "Ghost")}
        async with http.post(f"/api/rooms/{ROOM}/join", json=body) as response:
            assert response.status == 200, await response.json()
            ghost = await response.json()
        state_url = f"/api/rooms/{ROOM}?token={body['token']}"
        async with http.get(state_url) as response:
            assert response.status == 200
        events = await http.ws_connect(f"{ghost['events']}?ticket={ghost['ticket']}")
        assert await room_state_after(http, state_url, 5) == 404, "the ghost session was never removed"
        while (frame := await events.receive(timeout=5)).type is WSMsgType.TEXT:
            pass
        assert frame.type is WSMsgType.CLOSE and frame.data == 1000, frame
        assert "media never connected" in frame.extra, "the close frame says why"


async def test_a_participant_whose_media_stops_is_removed_though_their_sockets_stay_open(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    timeout_s = 2.0
    async with own_server(redis_url, f"{stream_prefix}s", janus_config, media_timeout_s=timeout_s) as (server, http):
        ana = await join(server, "Ana", "en", "en", SpeechTrack(silence(60)))
        try:
            await ana.wait_for(lambda: (ana.latest("roster") or {}).get("participants"), "Ana in the roster")
            state_url = f"/api/rooms/{ROOM}?token={issue_token(SECRET, ROOM, 'Ana')}"
            await asyncio.sleep(timeout_s + 1)
            async with http.get(state_url) as response:
                assert response.status == 200, "a participant whose media flows must stay"
            await ana.stop_media()  # the Janus handle dies; the events socket stays open
            status = await room_state_after(http, state_url, timeout_s + 5)
            assert status == 404, "a participant whose media stopped was never removed"
        finally:
            await ana.close()


async def test_healthz_and_the_room_page_are_served(http: ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        health = await response.json()
        assert set(health["workers"]) >= {"asr", "mt", "tts"} and health["janus"] == "connected"
        assert set(health["backlog"]["asr"]) == {"waiting", "in_progress"}
    async with http.get("/room/standup?name=Ana&speak=es&hear=es") as response:
        page = await response.text()
        assert response.status == 200 and "data-translated-audio" in page and "/static/room.js" in page
    async with http.get("/static/room.js") as response:
        assert response.status == 200 and "data-caption" in await response.text()
    async with http.get("/static/vendor/janus.js") as response:
        assert response.status == 200 and "Janus.init" in await response.text()
    async with http.get("/room/bad%20room!") as response:
        page = await response.text()
        assert response.status == 400 and "<h1>" in page and html.escape(ROOM_NAME_RULE) in page
    async with http.get("/api/config") as response:
        config = await response.json()
        assert config["tokens_required"] and "es" in [lang["code"] for lang in config["languages"]]
        assert config["ice_servers"] == [] and config["features"]["lipsync"] is False


async def test_each_join_gets_its_own_turn_credential_that_ends_with_its_token(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    """TURN REST API credentials: `expiry:participant` signed with the secret shared with coturn (which the
    browser test checks coturn accepts), expiring with the join token; /api/config hands out none."""
    turn = TurnOptions(("turn:198.18.0.1:3478?transport=udp", "turn:198.18.0.1:3478?transport=tcp"), "turn-secret")
    async with own_server(redis_url, stream_prefix, janus_config, turn=turn) as (_, http):
        users = []
        for name, ttl_s in (("Ana", 600.0), ("Bob", 900.0)):
            token = issue_token(SECRET, ROOM, name, ttl_s=ttl_s)
            body = {"name": name, "speak": "en", "hear": "es", "token": token}
            async with http.post(f"/api/rooms/{ROOM}/join", json=body) as response:
                reply = await response.json()
            [server] = reply["ice_servers"]
            expiry, user = server["username"].split(":")
            assert server["urls"] == list(turn.urls) and user == reply["id"]
            assert int(expiry) == int(verify_token(SECRET, token, ROOM).expires_at), "it ends with the token"
            assert len(base64.b64decode(server["credential"])) == 20, "an HMAC-SHA1, not a static password"
            users.append(server["username"])
            await http.post(f"{reply['events'].rsplit('/', 1)[0]}/leave?ticket={reply['ticket']}")
        assert users[0] != users[1]
        async with http.get("/api/config") as response:
            config = await response.json()
        assert config["ice_servers"] == [] and "turn-secret" not in json.dumps(config)
