"""The playout timeline: predictable delay, no gaps inside a segment, per-speaker order, lateness bound."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np

from gateway.media.playout import (
    OUTPUT_RATE,
    SEEN_PRUNE_AT,
    Clip,
    PlayoutOptions,
    PlayoutTimeline,
    TimelineTrack,
)

T0 = 1_000.0
OPTIONS = PlayoutOptions(delay_s=0.3, late_bound_s=10.0, reorder_wait_s=2.0)


def clip(
    speaker: str, seq: int, seconds: float, level: float = 0.5, ready_at: float = T0, captured_at: float = T0
) -> Clip:
    samples = np.full(round(seconds * OUTPUT_RATE), level, dtype=np.float32)
    return Clip(speaker, seq, samples, captured_at=captured_at, ready_at=ready_at)


def test_a_segment_starts_after_the_fixed_delay_and_plays_without_gaps() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    outcome, [placement] = timeline.offer(clip("a", 0, 1.0), now=T0 + 1.0)
    assert outcome == "scheduled"
    assert timeline.time_of(placement.start_sample) == T0 + 1.0 + OPTIONS.delay_s
    audio = timeline.render(placement.start_sample, placement.clip.samples.size)
    assert np.all(audio == 0.5)  # every sample of the segment, none missing
    assert np.all(timeline.render(placement.start_sample - 480, 480) == 0)  # silence before it


def test_segments_queue_back_to_back_instead_of_overlapping() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    _, [first] = timeline.offer(clip("a", 0, 2.0), now=T0)
    _, [second] = timeline.offer(clip("b", 0, 1.0, level=0.25), now=T0 + 0.5)
    assert second.start_sample == first.end_sample
    assert timeline.playing(timeline.time_of(second.start_sample) + 0.1) == second


def test_a_segment_waits_for_the_earlier_one_of_its_speaker_then_both_play_in_order() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    timeline.expect("a", 0)
    timeline.expect("a", 1)
    assert timeline.offer(clip("a", 1, 1.0), now=T0) == ("held", [])
    outcome, placed = timeline.offer(clip("a", 0, 1.0), now=T0 + 0.5)
    assert outcome == "scheduled"
    assert [p.clip.seq for p in placed] == [0, 1]
    assert placed[1].start_sample == placed[0].end_sample


def test_a_missing_segment_is_given_up_after_the_wait_and_counted_late() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    timeline.expect("a", 0)
    timeline.expect("a", 1)
    timeline.offer(clip("a", 1, 1.0, ready_at=T0), now=T0)
    assert timeline.poll(T0 + 1.0) == []
    [placement] = timeline.poll(T0 + OPTIONS.reorder_wait_s)
    assert placement.clip.seq == 1
    assert timeline.stats.late == 1
    # the one given up on arrives after all: never played out of order, captions only
    assert timeline.offer(clip("a", 0, 1.0), now=T0 + 3) == ("out_of_order", [])
    assert timeline.stats.out_of_order == 1


def test_a_segment_later_than_the_bound_is_captions_only() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    outcome, placed = timeline.offer(clip("a", 0, 1.0, captured_at=T0), now=T0 + OPTIONS.late_bound_s + 1)
    assert (outcome, placed) == ("late", [])
    assert timeline.stats.late == 1
    assert timeline.offer(clip("a", 0, 1.0), now=T0 + 20) == ("duplicate", [])


def test_forgetting_an_empty_segment_releases_the_ones_behind_it() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    timeline.expect("a", 0)
    timeline.expect("a", 1)
    timeline.offer(clip("a", 1, 1.0), now=T0)
    [placement] = timeline.forget("a", 0)
    assert placement.clip.seq == 1


def test_other_speakers_are_not_held_back() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    timeline.expect("a", 0)
    outcome, _ = timeline.offer(clip("b", 0, 1.0), now=T0)
    assert outcome == "scheduled"


async def test_the_track_sends_20ms_stereo_frames_of_the_timeline_paced_by_the_clock() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    timeline = PlayoutTimeline(PlayoutOptions(delay_s=0.0), origin=start)
    timeline.offer(clip("a", 0, 0.2, ready_at=start, captured_at=start), now=start)
    track = TimelineTrack(timeline, clock=loop.time)
    frames = [await track.recv() for _ in range(15)]
    elapsed = loop.time() - start
    assert 0.2 <= elapsed < 0.6
    assert all(f.samples == 960 and f.sample_rate == OUTPUT_RATE and f.layout.name == "stereo" for f in frames)
    levels = [float(np.abs(f.to_ndarray()).mean()) for f in frames]
    assert levels[0] > 10_000 and levels[-1] == 0  # the clip, then silence
    assert [f.pts for f in frames] == sorted(f.pts or 0 for f in frames)


async def test_between_translations_the_track_sends_silence_every_20_ms() -> None:
    """Gaps in the timestamps, without Opus DTX's marking, grew browsers' jitter buffers (playout.py)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    timeline = PlayoutTimeline(PlayoutOptions(delay_s=0.0), origin=start)
    timeline.offer(clip("a", 0, 0.1, ready_at=start, captured_at=start), now=start)
    track = TimelineTrack(timeline, clock=loop.time)
    frames = [await track.recv() for _ in range(25)]
    gaps = [b.pts - a.pts for a, b in itertools.pairwise(frames)]  # type: ignore[operator]
    assert gaps == [960] * 24, "speech, then silence, 20 ms a frame"
    assert float(np.abs(frames[-1].to_ndarray()).max()) == 0
    assert loop.time() - start >= 0.45, "paced by the clock"
    timeline.offer(clip("a", 1, 0.1, ready_at=loop.time(), captured_at=loop.time()), now=loop.time())
    speech = [await track.recv() for _ in range(3)]
    assert all(float(np.abs(f.to_ndarray()).mean()) > 10_000 for f in speech[1:]), "a new translation plays at once"
    assert [b.pts - a.pts for a, b in itertools.pairwise(speech)] == [960, 960]  # type: ignore[operator]


def test_a_long_meetings_timeline_remembers_a_bounded_number_of_segments() -> None:
    timeline = PlayoutTimeline(OPTIONS, origin=T0)
    for seq in range(2_000):
        now = T0 + seq
        assert timeline.offer(clip("ana", seq, 0.1, ready_at=now, captured_at=now), now)[0] == "scheduled"
        timeline.prune(now)
    assert len(timeline._seen) <= SEEN_PRUNE_AT + 1  # what it remembers, not 2,000 segments
    now = T0 + 2_000
    assert timeline.offer(clip("ana", 1_999, 0.1, ready_at=now, captured_at=now), now)[0] == "duplicate"
    assert timeline.offer(clip("ana", 5, 0.1, ready_at=now, captured_at=now), now)[0] == "out_of_order"
