"""Lip-sync on CPU: a real face (scikit-image's astronaut photo, moving like a webcam head), real
synthesized Spanish speech with espeak-ng's phoneme timings, FaceMesh to measure the result.

Sync is measured, not eyeballed (workers/lipsync_metric.py): the re-made mouth opens and closes with the
speech's loudness, the untouched video does not, and the lips close on p, b and m."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis

from benchmarks.lipsync import clip_of, contact_sheet, measure, plot
from benchmarks.talking_head import talking_head_frames
from pipeline.audio import float_to_pcm16
from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from pipeline.frames import Frame, decode_frames, make_clip, store_frames
from pipeline.messages import SAMPLE_RATE, Phoneme, SynthesizedSpeech, VideoClip
from pipeline.routes import LIPSYNC, RESULTS
from pipeline.video import read_video
from workers.base import Worker
from workers.engines.lipsync.base import LipSyncOptions, SyncedFrames, timeline
from workers.engines.lipsync.face import CHIN, EYE_LEFT, EYE_RIGHT, NOSE_BASE, track_faces
from workers.engines.lipsync.mouthwarp import MouthWarpLipSyncer
from workers.engines.lipsync.visemes import mouth_track, viseme_of
from workers.engines.tts.espeak import EspeakSynthesizer
from workers.engines.tts.render import render
from workers.lipsync import LipSyncStage
from workers.lipsync_metric import (
    CLOSED_OPENING,
    PASS_CORRELATION,
    PASS_LAG_FRAMES,
    UNSYNCED_MAX,
    bilabial_openings,
    loudness_per_frame,
    mouth_openings,
    sync_score,
)

ROOT = Path(__file__).resolve().parents[1]
FPS = 25.0
VISIBLE = 4  # levels of 255: smaller changes do not show
TEXT = "Por favor, trae mi bolso, mamá. La casa es muy bonita."


@pytest.fixture(scope="module")
def speech() -> SynthesizedSpeech:
    audio, _ = render(EspeakSynthesizer().synthesize(TEXT, "es"))
    return SynthesizedSpeech(
        room="r1", speaker="ana", seq=4, stamps=(("tts", time.time()),), language="es", text=TEXT,
        pcm=float_to_pcm16(audio.samples), phonemes=audio.phonemes, has_frames=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def head(speech: SynthesizedSpeech) -> list[Frame]:
    return talking_head_frames(len(speech.pcm) / 2 / SAMPLE_RATE + 0.2, FPS)


@pytest.fixture(scope="module")
def engine() -> MouthWarpLipSyncer:
    return MouthWarpLipSyncer()


@pytest.fixture(scope="module")
def synced(engine: MouthWarpLipSyncer, speech: SynthesizedSpeech, head: list[Frame]) -> SyncedFrames:
    return engine.sync(speech, head, [i / FPS for i in range(len(head))])


def samples_of(speech: SynthesizedSpeech) -> np.ndarray:
    return np.frombuffer(speech.pcm, "<i2").astype(np.float32) / 32768


def test_mouth_moves_with_the_speech_and_closes_on_p_b_m(
    synced: SyncedFrames, speech: SynthesizedSpeech, head: list[Frame]
) -> None:
    count = len(synced.frames)
    loudness = loudness_per_frame(samples_of(speech), SAMPLE_RATE, FPS, count)
    openings = mouth_openings(synced.frames)
    score = sync_score(openings, loudness, FPS)
    still = sync_score(mouth_openings(head[:count]), loudness, FPS)
    closed = bilabial_openings(openings, speech.phonemes, FPS)
    vowels = [openings[int((p.start_s + p.end_s) / 2 * FPS)] for p in speech.phonemes if p.symbol in "aeo"]
    print(f"\nlip-synced: corr {score.corr:.2f} at lag {score.lag_frames}; untouched video: corr {still.corr:.2f}")
    print(f"opening at p/b/m {np.round(closed, 3)}, vowels median {np.median(vowels):.3f}")
    assert synced.synced == count and count == int(np.ceil(len(speech.pcm) / 2 / SAMPLE_RATE * FPS))
    assert score.corr >= PASS_CORRELATION and abs(score.lag_frames) <= PASS_LAG_FRAMES and score.synced
    assert still.corr <= UNSYNCED_MAX
    assert len(closed) >= 5 and max(closed) <= CLOSED_OPENING < np.median(vowels) / 2


def test_only_the_mouth_and_jaw_change_with_no_edge(
    synced: SyncedFrames, speech: SynthesizedSpeech, head: list[Frame]
) -> None:
    line = timeline([i / FPS for i in range(len(head))], len(speech.pcm) / 2 / SAMPLE_RATE)
    checked = list(range(0, len(synced.frames), 10))
    for k, face in zip(checked, track_faces([head[line.source[k]] for k in checked]), strict=True):
        assert face is not None
        out, source = synced.frames[k], head[line.source[k]]
        diff = np.abs(out.astype(int) - source.astype(int)).max(axis=2)
        nose, chin = face[NOSE_BASE], face[CHIN]
        changed = np.argwhere(diff > VISIBLE)
        if changed.size == 0:
            continue
        (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
        lower_face = chin[1] - nose[1]
        assert nose[1] - 0.2 * lower_face <= y0 and y1 <= chin[1] + 0.5 * lower_face  # from the nose to the chin
        assert face[:, 0].min() <= x0 and x1 <= face[:, 0].max()
        mid_nose = (face[[EYE_LEFT, EYE_RIGHT], 1].mean() + nose[1]) / 2
        assert diff[: int(mid_nose)].max() == 0  # the eyes, the upper nose and all above: untouched, bit for bit
        ring = np.concatenate([diff[y0, x0:x1], diff[y1, x0:x1], diff[y0:y1, x0], diff[y0:y1, x1]])
        assert ring.max() <= 12  # the change fades out toward its edge: no box


def test_a_steady_mouth_stays_steady_on_a_moving_head(engine: MouthWarpLipSyncer, head: list[Frame]) -> None:
    """One long vowel at constant loudness: the mouth holds its opening while the head sways and turns."""
    seconds = 3.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 140 * t)).astype(np.float32)
    vowel = SynthesizedSpeech(
        room="r1", speaker="ana", seq=5, pcm=float_to_pcm16(tone), phonemes=(Phoneme("a", 0.0, seconds),)
    )
    frames = head[: int(seconds * FPS)]
    out = engine.sync(vowel, frames, [i / FPS for i in range(len(frames))]).frames
    openings = mouth_openings(out)[10:-10]
    motion = [mouth_motion(a, b) for a, b in itertools.pairwise(out[10:-10])]
    head_motion = [mouth_motion(a, b) for a, b in itertools.pairwise(frames[10:-10])]
    print(f"\nopening {openings.mean():.3f} +- {openings.std():.3f}; frame-to-frame change in the mouth region")
    print(f"  {np.mean(motion):.2f} (the untouched moving head: {np.mean(head_motion):.2f})")
    assert openings.mean() > 0.2 and openings.std() < 0.02
    assert np.mean(motion) < 1.5 * np.mean(head_motion)  # the mouth moves with the head, no flicker on top


def mouth_motion(a: Frame, b: Frame) -> float:
    """Mean absolute change between two frames around the mouth of the photo (lower middle of the frame)."""
    height, width = a.shape[:2]
    region = (slice(height // 3, 2 * height // 3), slice(width // 3, 2 * width // 3))
    return float(np.abs(a[region].astype(int) - b[region].astype(int)).mean())


def test_a_frame_without_a_face_passes_through(engine: MouthWarpLipSyncer, speech: SynthesizedSpeech) -> None:
    frames = talking_head_frames(1.0, FPS)
    blank = np.full_like(frames[0], 128)
    frames[12] = blank
    short = SynthesizedSpeech(room="r1", speaker="ana", seq=6, pcm=speech.pcm[: SAMPLE_RATE * 2])
    result = engine.sync(short, frames, [i / FPS for i in range(len(frames))])
    assert result.synced == len(frames) - 1
    assert np.array_equal(result.frames[12], blank)


def test_timeline_follows_the_speech_at_the_source_rate() -> None:
    fifteen = [i / 15 for i in range(30)]  # a 2 s segment from a 15 fps camera
    line = timeline(fifteen, 2.4)  # its translation lasts 2.4 s
    assert line.fps == pytest.approx(15) and len(line.times_s) == 36
    assert line.source[0] == 0 and line.source[-1] == 29 and list(line.source) == sorted(line.source)
    fast = timeline([i / 50 for i in range(100)], 2.0)
    assert fast.fps == 25 and len(fast.times_s) == 50 and fast.source[25] == 50
    assert timeline([], 2.0).times_s == () and timeline([0.0], 0.5).source == (0,) * 13


def test_visemes_and_their_track() -> None:
    assert [viseme_of(s).name for s in ("p", "b", "m", "a", "ɑː", "u", "tʃ", "ˌx", "f")] == [
        "PBM", "PBM", "PBM", "AA", "AA", "WU", "CH", "rest", "FV",
    ]  # fmt: skip
    phonemes = (Phoneme("m", 0.1, 0.2), Phoneme("a", 0.2, 0.5), Phoneme("p", 0.5, 0.58), Phoneme("a", 0.58, 0.9))
    samples = np.full(SAMPLE_RATE, 0.2, np.float32)
    track = mouth_track(phonemes, samples, SAMPLE_RATE, FPS, 25)
    assert track.open[int(0.35 * FPS)] > 0.2 and track.open[int(0.74 * FPS)] > 0.2
    assert track.open[track.closed].max() == 0 and track.closed[int(0.54 * FPS)] and track.closed[int(0.14 * FPS)]
    envelope_only = mouth_track((), samples * np.linspace(0, 1, SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, FPS, 25)
    assert envelope_only.open[-3] > envelope_only.open[3] and not envelope_only.closed.any()


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    connected = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, block_ms=100))
    yield connected
    await connected.close()


async def test_the_worker_lip_syncs_through_redis(
    bus: Bus, engine: MouthWarpLipSyncer, speech: SynthesizedSpeech, head: list[Frame]
) -> None:
    """The gateway's side stores the frames and the tts side emits speech: it reaches results at once and
    the lipsync stream too, whose worker emits the clip. Speech whose frames are gone gets no clip."""
    await store_frames(
        bus.client, bus.options.prefix, make_clip("r1", "ana", 4, head, [i / FPS for i in range(len(head))])
    )
    fresh = speech.stamped("tts")
    await bus.publish(fresh)
    await bus.publish(SynthesizedSpeech(**{**fresh.__dict__, "seq": 9}))  # no frames stored
    assert [d.message.seq for d in await bus.tail(RESULTS, "0") if d.message] == [4, 9]  # audio did not wait
    stage = LipSyncStage(LipSyncOptions(), bus.options, redis.Redis.from_url(bus.options.redis_url), engine)
    worker = Worker(stage, bus, WorkerOptions(heartbeat_interval_s=0.2, message_timeout_s=60))
    running = asyncio.create_task(worker.run())
    try:
        clip = await wait_for_clip(bus)
    finally:
        worker.stop()
        await running
    frames = decode_frames(clip)
    assert (clip.language, clip.engine, clip.seq, clip.width, clip.height) == ("es", "mouthwarp", 4, 320, 240)
    assert len(frames) == len(clip.timestamps_s) == int(np.ceil(len(speech.pcm) / 2 / SAMPLE_RATE * FPS))
    assert [s for s, _ in clip.stamps if not s.endswith(".start")][-2:] == ["tts", "lipsync"]
    assert stage.skipped["no_frames"] == 1 and (await bus.backlog(LIPSYNC, LIPSYNC))["in_progress"] == 0


async def wait_for_clip(bus: Bus, timeout_s: float = 60.0) -> VideoClip:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        clips = [d.message for d in await bus.tail(RESULTS, "0") if isinstance(d.message, VideoClip)]
        if clips:
            return clips[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no lip-synced clip reached results")


def test_late_speech_gives_way(engine: MouthWarpLipSyncer, speech: SynthesizedSpeech) -> None:
    stage = LipSyncStage(LipSyncOptions(max_wait_s=1.0), BusOptions(), frames=None, syncer=engine)
    stage.frames = redis.Redis()  # never used: the late speech is dropped before any frame is read
    late = SynthesizedSpeech(**{**speech.__dict__, "stamps": (("tts", time.time() - 5),)})
    assert stage.process(late) == [] and stage.skipped["late"] == 1


def test_talking_head_y4m_for_chromiums_fake_camera(tmp_path: Path) -> None:
    out = tmp_path / "face.y4m"
    command = [sys.executable, "-m", "benchmarks.talking_head", str(out), "--seconds", "0.4", "--size", "320x240"]
    subprocess.run(command, check=True, cwd=ROOT, timeout=120)
    assert out.read_bytes().startswith(b"YUV4MPEG2 W320 H240 F25:1")
    video = read_video(out)
    assert len(video.frames) == 10 and video.fps == pytest.approx(25) and video.audio.size == 0
    assert all(face is not None for face in track_faces(video.frames))  # FaceMesh finds the face in each


def test_benchmark_measures_each_step(engine: MouthWarpLipSyncer, speech: SynthesizedSpeech, tmp_path: Path) -> None:
    row, frames = measure(engine, clip_of(speech, 1.0), (320, 240))
    assert row["frames"] == len(frames) == 25 and row["fps"] > 0
    assert set(row["ms_per_frame"]) == {"decode", "engine", "encode", "landmarks", "visemes", "warp"}
    plot([{"engine": "cpu", **row}], tmp_path / "lipsync.png")
    contact_sheet(frames, tmp_path / "frames.png")
    assert (tmp_path / "lipsync.png").stat().st_size > 10_000 and (tmp_path / "frames.png").stat().st_size > 10_000
