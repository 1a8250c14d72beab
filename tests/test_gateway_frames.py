"""The gateway's ends of the lip-sync path, on a real Redis: a consenting speaker's segment frames go out
(encoded, stored, the segment marked `has_frames`) only when a listener wants lip-sync and the service
level allows it; lip-synced clips come back onto the feed's timeline. The rooms are built directly, not
through Janus: the media path has its own tests (test_gateway.py)."""

from __future__ import annotations

import json

import numpy as np
from av import VideoFrame

from gateway.bridge.frames import FramePath
from gateway.bridge.ingest import Ingest
from gateway.media.capture import VideoWindow
from gateway.media.playout import PlayoutOptions
from gateway.media.video import FEED_FPS, frame_at
from gateway.options import GatewayOptions
from gateway.rooms.overload import Level, OverloadMonitor, OverloadOptions
from gateway.rooms.room import Participant, Profile, Room
from gateway.web.app import lipsync_available
from pipeline.bus import Bus
from pipeline.frames import decode_frames, frames_key, make_clip
from pipeline.messages import SpeechSegment, VideoClip, decode_as
from pipeline.metrics import Metrics
from pipeline.routes import LIPSYNC
from pipeline.segmenter import Segment

RED, GREEN = (220, 30, 30), (30, 200, 60)
SEGMENT_S = 1.0


def camera_frames(rgb: tuple[int, int, int], count: int) -> list[tuple[float, VideoFrame]]:
    image = np.full((240, 320, 3), rgb, dtype=np.uint8)
    return [(i / FEED_FPS, VideoFrame.from_ndarray(image, format="rgb24")) for i in range(count)]


def meeting(*, face_consent: bool, listener_lipsync: bool) -> tuple[Room, Participant]:
    """Bob (English, with a camera) speaking to Ana (Spanish)."""
    room = Room("r", PlayoutOptions())
    bob = Participant("bob", "r", Profile("Bob", "en", "en", face_consent=face_consent))
    if face_consent:  # the gateway keeps a speaker's frames only with their consent (Gateway._keep_face)
        bob.video_window = VideoWindow(64)
        bob.video_window.frames.extend(camera_frames(RED, int(SEGMENT_S * FEED_FPS)))
    room.add(bob)
    room.add(Participant("ana", "r", Profile("Ana", "es", "es", lipsync=listener_lipsync)))
    return room, bob


def ingest_for(bus: Bus, level: Level = Level.FULL) -> Ingest:
    overload = OverloadMonitor(bus, OverloadOptions(), Metrics())
    overload.policy.level = level
    return Ingest(bus, GatewayOptions(), overload, FramePath(bus))


async def speak(ingest: Ingest, room: Room, speaker: Participant) -> SpeechSegment:
    samples = int(SEGMENT_S * 16_000)
    segment = Segment(np.zeros(samples, dtype=np.float32), 0, samples, 0, samples, "pause")
    seq = room.next_seq(speaker.id)
    await ingest.publish(room, speaker, segment, captured_at=SEGMENT_S, targets=("es",), seq=seq)
    await ingest.frames.drain()
    (delivery,) = await ingest.bus.tail("asr", "0-0", count=10)
    assert isinstance(delivery.message, SpeechSegment)
    return delivery.message


async def stored_keys(bus: Bus) -> list[bytes]:
    return [key async for key in bus.client.scan_iter(match=bus.key("frames", "*"))]


async def test_a_consenting_speakers_frames_go_out_with_the_segment(bus: Bus) -> None:
    room, bob = meeting(face_consent=True, listener_lipsync=True)
    ingest = ingest_for(bus)
    segment = await speak(ingest, room, bob)
    assert segment.has_frames
    data = await bus.client.get(frames_key(bus.options.prefix, "r", "bob", segment.seq))
    assert data is not None
    stored = decode_as(data, VideoClip)
    assert stored.language == ""
    frames = decode_frames(stored)
    assert len(frames) == int(SEGMENT_S * FEED_FPS) and frames[0].shape == (240, 320, 3)
    assert np.allclose(frames[0].reshape(-1, 3).mean(axis=0), RED, atol=8), "the speaker's own frames"
    assert stored.timestamps_s[-1] > 0 and list(stored.timestamps_s) == sorted(stored.timestamps_s)
    assert ingest.frames.stats.stored == 1 and ingest.frames.stats.store_failed == 0


async def test_without_consent_no_frame_leaves_the_gateway(bus: Bus) -> None:
    room, bob = meeting(face_consent=False, listener_lipsync=True)
    segment = await speak(ingest_for(bus), room, bob)
    assert not segment.has_frames and await stored_keys(bus) == []


async def test_no_frames_go_out_when_no_listener_wants_lipsync(bus: Bus) -> None:
    room, bob = meeting(face_consent=True, listener_lipsync=False)
    segment = await speak(ingest_for(bus), room, bob)
    assert not segment.has_frames and await stored_keys(bus) == []
    assert room.video.get("bob", segment.seq) is not None, "the original frames still play on the feed"


async def test_no_frames_go_out_once_overload_has_switched_lipsync_off(bus: Bus) -> None:
    room, bob = meeting(face_consent=True, listener_lipsync=True)
    segment = await speak(ingest_for(bus, Level.NO_LIPSYNC), room, bob)
    assert not segment.service.lipsync and not segment.has_frames and await stored_keys(bus) == []


async def test_a_lipsynced_clip_lands_on_the_feed_at_the_feed_rate(bus: Bus) -> None:
    room, bob = meeting(face_consent=True, listener_lipsync=True)
    ingest = ingest_for(bus)
    segment = await speak(ingest, room, bob)
    speech_s, clip_fps = 2.0, 25
    green = [np.full((240, 320, 3), GREEN, dtype=np.uint8)] * int(speech_s * clip_fps)
    clip = make_clip("r", "bob", segment.seq, green, [i / clip_fps for i in range(len(green))], language="es")
    path = ingest.frames
    path.receive({"r": room}, clip)
    await path.drain()
    kept = room.video.get("bob", segment.seq)
    assert kept is not None and abs(len(kept.lipsynced["es"]) - speech_s * FEED_FPS) <= 1
    frame, synced = frame_at(kept, "es", 1.0, speech_s)
    assert synced and np.allclose(frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0), GREEN, atol=8)
    original, synced = frame_at(kept, "ca", 1.0, speech_s)  # no clip for Catalan: Bob's own frames
    assert not synced and original.to_ndarray(format="rgb24")[0, 0, 0] > 150
    assert path.stats.clips == 1


async def test_a_corrupt_or_orphan_clip_is_counted_and_the_originals_stay(bus: Bus) -> None:
    room, bob = meeting(face_consent=True, listener_lipsync=True)
    ingest = ingest_for(bus)
    segment = await speak(ingest, room, bob)
    corrupt = VideoClip("r", "bob", segment.seq, language="es", frames=b"\x00\x00\x00\x01\x00\x00\x00\x03abc",
                        timestamps_s=(0.0,))  # fmt: skip
    orphan = make_clip("gone", "bob", segment.seq, [np.zeros((8, 8, 3), np.uint8)], [0.0], language="es")
    for clip in (corrupt, orphan):
        ingest.frames.receive({"r": room}, clip)
    await ingest.frames.drain()
    assert ingest.frames.stats.clips_failed == 2 and ingest.frames.stats.clips == 0
    kept = room.video.get("bob", segment.seq)
    assert kept is not None and kept.lipsynced == {}


async def test_lipsync_is_offered_while_a_lipsync_worker_is_alive(bus: Bus) -> None:
    assert not await lipsync_available(bus)
    await bus.client.set(bus.heartbeat_key(LIPSYNC, "w1"), json.dumps({"service_s": 0.1}), ex=10)
    assert await lipsync_available(bus)


def test_the_video_counters_reach_prometheus() -> None:
    metrics = Metrics()
    metrics.set_video({"lipsynced": 2, "original_frames": 7})
    text = metrics.render().decode()
    assert 'babelroom_video{what="lipsynced"} 2.0' in text and 'babelroom_video{what="original_frames"} 7.0' in text
