"""The gateway over real HTTP, real aiortc peers and a real Redis bus (no workers: the test plays them).

Shows: input validation answers 4xx with a clear JSON message while a connected session carries on;
a participant's speech reaches the `asr` stream as a SpeechSegment for the listeners' languages;
results published on the bus come back as captions in each listener's language and as translated
audio on the listener's track, never to the speaker.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame

from gateway.app import create_app
from gateway.options import GatewayOptions
from gateway.tokens import issue_token
from pipeline.audio import float_to_pcm16, resample
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import SpeechSegment, SynthesizedSpeech, Transcript, Translation
from tests.speech import espeak, silence

SECRET = "test-secret"
ROOM = "standup"
WAIT_S = 15.0


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


@dataclass
class Peer:
    """A participant played by an aiortc client, as the browser would be."""

    pc: RTCPeerConnection
    id: str = ""
    channel: Any = None  # the data channel: signaling and controls, as the page uses it
    messages: list[dict[str, Any]] = field(default_factory=list)
    translated_peak: float = 0.0  # loudest 20 ms of the translated track, RMS in [0, 1]

    def captions(self, **match: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "caption" and all(m[k] == v for k, v in match.items())]

    async def watch_translated(self, track: MediaStreamTrack) -> None:
        while True:
            frame = await track.recv()
            samples = frame.to_ndarray().astype(np.float32) / 32768  # type: ignore[union-attr]
            self.translated_peak = max(self.translated_peak, float(np.sqrt(np.mean(samples**2))))


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def server(redis_url: str, stream_prefix: str) -> AsyncIterator[BaseTestServer]:
    options = GatewayOptions(token_secret=SECRET, playout_delay_s=0.1)
    app = create_app(Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix)), options)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


@pytest.fixture
async def http(server: BaseTestServer) -> AsyncIterator[ClientSession]:
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        yield session


async def join(http: ClientSession, name: str, speak: str, hear: str, mic: MediaStreamTrack, **toggles: bool) -> Peer:
    peer = Peer(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    channel = peer.channel = peer.pc.createDataChannel("babelroom")
    channel.on("message", lambda text: peer.messages.append(json.loads(text)))
    translated = peer.pc.addTransceiver(mic, direction="sendrecv")
    peer.pc.addTransceiver("audio", direction="recvonly")
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    body = {
        "token": issue_token(SECRET, ROOM, name),
        "speak": speak,
        "hear": hear,
        "sdp": peer.pc.localDescription.sdp,
        "options": toggles,
    }
    async with http.post(f"/api/rooms/{ROOM}/join", json=body) as response:
        reply = await response.json()
        assert response.status == 200, reply
    peer.id = reply["id"]
    await peer.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
    asyncio.get_running_loop().create_task(peer.watch_translated(translated.receiver.track))
    return peer


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
    http: ClientSession, bus: Bus
) -> None:
    ana = await join(http, "Ana", "es", "es", SpeechTrack(silence(60)))
    bob = await join(http, "Bob", "en", "en", SpeechTrack(speech_then_silence()), match_voice=True)
    await eventually(lambda: any(m["type"] == "roster" and len(m["participants"]) == 2 for m in ana.messages), "roster")

    segment = await first_segment(bus)
    assert (segment.room, segment.speaker, segment.language, segment.targets) == (ROOM, bob.id, "en", ("es",))
    assert 1.0 < segment.duration_s < 4.0 and segment.stamp("captured") is not None
    assert segment.match_voice  # Bob opted in to pitch matching
    captured = segment.stamp("captured") or 0.0
    assert abs(captured - time.time()) < 5.0

    base: dict[str, Any] = {"room": ROOM, "speaker": bob.id, "seq": segment.seq, "stamps": segment.stamps}
    await bus.publish(Transcript(**base, language="en", targets=("es",), text="the house is big"))
    await eventually(lambda: bool(ana.captions(final=False, lang="es")), "an interim caption at Ana")
    await bus.publish(Translation(**base, source_language="en", language="es", source_text="the house is big",
                                  text="la casa es grande"))  # fmt: skip
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)
    await bus.publish(SynthesizedSpeech(**base, language="es", text="la casa es grande", pcm=float_to_pcm16(tone)))

    await eventually(lambda: bool(ana.captions(final=True, lang="es")), "a final Spanish caption at Ana")
    final = ana.captions(final=True, lang="es")[0]
    assert (final["text"], final["original"], final["speaker"]) == ("la casa es grande", "the house is big", "Bob")
    await eventually(lambda: ana.translated_peak > 0.1, "translated speech on Ana's track", timeout_s=5)
    assert bob.captions(lang="en", final=True), "the speaker sees their own words"
    assert not bob.captions(lang="es"), "the speaker never receives their own translation"
    assert bob.translated_peak < 0.01

    await bob.pc.close()
    await ana.pc.close()


async def test_bad_requests_get_a_clear_4xx_and_the_connected_session_carries_on(http: ClientSession, bus: Bus) -> None:
    ana = await join(http, "Ana", "es", "es", SpeechTrack(silence(60)))
    offer = await _offer_sdp()
    good = {"speak": "en", "hear": "es", "sdp": offer}
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
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "sdp": "hello"}, 400, "malformed SDP"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "sdp": "v=0\r\nm=garbage\r\n"}, 400, "SDP"),
        (b"{not json", 400, "not valid JSON"),
        ({**good, "token": issue_token(SECRET, ROOM, "Eve"), "pad": "x" * 200_000}, 413, "too large"),
    ]
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

    # Ana's session is untouched: still in the room, and still gets what is published for her.
    async with http.get(f"/api/rooms/{ROOM}") as response:
        assert [p["name"] for p in (await response.json())["participants"]] == ["Ana"]
    base: dict[str, Any] = {"room": ROOM, "speaker": "someone", "seq": 0}
    await bus.publish(Translation(**base, source_language="en", language="es", source_text="hi", text="hola"))
    await eventually(lambda: bool(ana.captions(final=True, lang="es", text="hola")), "Ana's caption")
    assert ana.pc.connectionState == "connected"
    await ana.pc.close()


async def test_the_floor_button_asks_for_the_floor_queues_and_gives_it_up(http: ClientSession) -> None:
    ana = await join(http, "Ana", "es", "es", SpeechTrack(silence(60)))
    bob = await join(http, "Bob", "en", "en", SpeechTrack(silence(60)))

    def floor_is(holder: Peer | None, queue: list[Peer]) -> Callable[[], bool]:
        def check() -> bool:
            floors = [m for m in bob.messages if m["type"] == "floor"]
            return (
                bool(floors)
                and floors[-1]["holder"] == (holder.id if holder else None)
                and floors[-1]["queue_ids"] == [p.id for p in queue]
            )

        return check

    await eventually(lambda: ana.channel.readyState == "open" and bob.channel.readyState == "open", "channels")
    ana.channel.send(json.dumps({"type": "floor", "action": "request"}))
    await eventually(floor_is(ana, []), "Ana granted the floor")
    bob.channel.send(json.dumps({"type": "floor", "action": "request"}))
    await eventually(floor_is(ana, [bob]), "Bob queued behind Ana")
    ana.channel.send(json.dumps({"type": "floor", "action": "release"}))
    await eventually(floor_is(bob, []), "the floor passed to Bob")
    bob.channel.send(json.dumps({"type": "floor", "action": "grab"}))
    await eventually(lambda: any(m["type"] == "error" and "grab" in m["error"] for m in bob.messages), "an error")
    for peer in (ana, bob):
        await peer.pc.close()


async def test_healthz_and_the_room_page_are_served(http: ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        health = await response.json()
        assert set(health["workers"]) >= {"asr", "mt", "tts"}
        assert set(health["backlog"]["asr"]) == {"waiting", "in_progress"}
    async with http.get("/room/standup?name=Ana&speak=es&hear=es") as response:
        page = await response.text()
        assert response.status == 200 and "data-translated-audio" in page and "/static/room.js" in page
    async with http.get("/static/room.js") as response:
        assert response.status == 200 and "data-caption" in await response.text()
    async with http.get("/api/config") as response:
        config = await response.json()
        assert config["tokens_required"] and "es" in [lang["code"] for lang in config["languages"]]
        assert config["ice_servers"] == []


async def _offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp
