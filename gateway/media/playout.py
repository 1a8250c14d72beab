"""Translated speech playout: one timeline per (room, language), read by every listener of it.

A timeline is a wall-clock-anchored sample grid at OUTPUT_RATE. Synthesized segments are placed on
it whole (no gaps inside a segment), each starting `delay_s` after it is ready or right after the
previous one, whichever is later: listeners hear a predictable initial delay, then continuous speech.
A speaker's segments play in `seq` order: a segment waits (at most `reorder_wait_s`) for an earlier
one still in the pipeline, and one older than what already played, or ready later than
`late_bound_s` after it was spoken, becomes captions only and is counted.

The timeline itself does no I/O and takes `now` as an argument, so its rules are unit-tested
directly; `TimelineTrack` is the aiortc audio track a listener's peer connection sends.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from gateway.options import LATE_BOUND_S, PLAYOUT_DELAY_S, REORDER_WAIT_S
from pipeline.audio import Samples, float_to_pcm16, pcm16_to_float, resample

OUTPUT_RATE = 48_000  # what aiortc's Opus encoder takes
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
# A listener track that fell this far behind the wall clock (its sender stalled) skips ahead.
MAX_TRACK_LAG_S = 0.5
# Segments of a speaker remembered as seen (to tell a duplicate from late speech) behind the newest placed:
# a meeting's timeline must not grow with its length. An older redelivery counts as out of order instead.
SEEN_BEHIND = 64
SEEN_PRUNE_AT = 256
# Played speech stays on the timeline this long: the echo guard (gateway/bridge/echo.py) compares a listener's
# next segment (at most MAX_SEGMENT_S, 10 s, plus its echo's lag) with what they were played.
KEEP_PLAYED_S = 14.0

Outcome = Literal["scheduled", "held", "late", "out_of_order", "duplicate"]


@dataclass(frozen=True)
class PlayoutOptions:
    delay_s: float = PLAYOUT_DELAY_S
    late_bound_s: float = LATE_BOUND_S
    reorder_wait_s: float = REORDER_WAIT_S
    rate: int = OUTPUT_RATE


@dataclass(frozen=True)
class Clip:
    """One synthesized segment, resampled to the timeline's rate."""

    speaker: str
    seq: int
    samples: Samples
    captured_at: float | None = None  # wall time its source speech ended
    ready_at: float = 0.0  # wall time it reached the gateway

    @classmethod
    def from_pcm16(
        cls, speaker: str, seq: int, pcm: bytes, rate: int, captured_at: float | None, ready_at: float
    ) -> Clip:
        return cls(speaker, seq, resample(pcm16_to_float(pcm), rate, OUTPUT_RATE), captured_at, ready_at)


@dataclass(frozen=True)
class Placement:
    clip: Clip
    start_sample: int

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.clip.samples.size


@dataclass
class PlayoutStats:
    scheduled: int = 0
    late: int = 0  # ready past the bound, or given up on while held: captions only
    out_of_order: int = 0  # older than a segment of the same speaker already placed: captions only
    duplicates: int = 0


@dataclass
class _SpeakerState:
    last_placed: int = -1
    expected: set[int] = field(default_factory=set)
    held: dict[int, Clip] = field(default_factory=dict)


class PlayoutTimeline:
    def __init__(self, options: PlayoutOptions | None = None, origin: float | None = None) -> None:
        self.options = options or PlayoutOptions()
        self.origin = time.time() if origin is None else origin  # wall time of sample 0
        self.stats = PlayoutStats()
        self._placements: list[Placement] = []
        self._tail = 0  # first free sample after everything placed
        self._speakers: dict[str, _SpeakerState] = {}
        self._seen: set[tuple[str, int]] = set()

    # -- time -------------------------------------------------------------------------------------
    def sample_at(self, now: float) -> int:
        return max(0, round((now - self.origin) * self.options.rate))

    def time_of(self, sample: int) -> float:
        return self.origin + sample / self.options.rate

    # -- input ------------------------------------------------------------------------------------
    def expect(self, speaker: str, seq: int) -> None:
        """The gateway sent this segment for translation into this timeline's language."""
        state = self._state(speaker)
        if seq > state.last_placed:
            state.expected.add(seq)

    def forget(self, speaker: str, seq: int) -> list[Placement]:
        """No speech will come for this segment (nothing was said, or it failed): stop waiting for it."""
        self._state(speaker).expected.discard(seq)
        return self._release(speaker, None)

    def offer(self, clip: Clip, now: float) -> tuple[Outcome, list[Placement]]:
        """Take a synthesized clip; returns what happened to it and every placement it allowed."""
        key = (clip.speaker, clip.seq)
        if key in self._seen:
            self.stats.duplicates += 1
            return "duplicate", []
        self._seen.add(key)
        state = self._state(clip.speaker)
        state.expected.discard(clip.seq)
        if clip.seq <= state.last_placed:
            self.stats.out_of_order += 1
            return "out_of_order", []
        if clip.captured_at is not None and now - clip.captured_at > self.options.late_bound_s:
            self.stats.late += 1
            return "late", self._release(clip.speaker, now)
        if any(seq < clip.seq for seq in state.expected):
            state.held[clip.seq] = clip
            return "held", []
        placed = [self._place(clip, now)]
        return "scheduled", placed + self._release(clip.speaker, now)

    def poll(self, now: float) -> list[Placement]:
        """Give up on segments that held others back for longer than `reorder_wait_s`."""
        placed: list[Placement] = []
        for speaker, state in self._speakers.items():
            waited_out = [c for c in state.held.values() if now - c.ready_at >= self.options.reorder_wait_s]
            if waited_out:
                first_held = min(c.seq for c in waited_out)
                missing = {seq for seq in state.expected if seq < first_held}
                self.stats.late += len(missing)
                state.expected -= missing
                placed += self._release(speaker, now)
        return placed

    # -- output -----------------------------------------------------------------------------------
    def render(self, start_sample: int, count: int) -> Samples:
        """The timeline's audio in [start_sample, start_sample + count): speech where placed, else silence."""
        out = np.zeros(count, dtype=np.float32)
        end = start_sample + count
        for placement in self._placements:
            lo, hi = max(start_sample, placement.start_sample), min(end, placement.end_sample)
            if lo < hi:
                out[lo - start_sample : hi - start_sample] = placement.clip.samples[
                    lo - placement.start_sample : hi - placement.start_sample
                ]
        return out

    def playing(self, now: float) -> Placement | None:
        sample = self.sample_at(now)
        return next((p for p in self._placements if p.start_sample <= sample < p.end_sample), None)

    def prune(self, now: float) -> None:
        """Drop placements every listener played (they never lag more than MAX_TRACK_LAG_S) and the echo
        guard no longer needs."""
        horizon = self.sample_at(now - max(2 * MAX_TRACK_LAG_S, KEEP_PLAYED_S))
        self._placements = [p for p in self._placements if p.end_sample > horizon]

    @property
    def tail_time(self) -> float:
        return self.time_of(self._tail)

    # -- internals --------------------------------------------------------------------------------
    def _state(self, speaker: str) -> _SpeakerState:
        return self._speakers.setdefault(speaker, _SpeakerState())

    def _place(self, clip: Clip, now: float) -> Placement:
        start = max(self.sample_at(now + self.options.delay_s), self._tail)
        placement = Placement(clip, start)
        self._placements.append(placement)
        self._tail = placement.end_sample
        state = self._state(clip.speaker)
        state.last_placed = max(state.last_placed, clip.seq)
        state.expected = {seq for seq in state.expected if seq > state.last_placed}
        if len(self._seen) > SEEN_PRUNE_AT:
            self._seen = {(s, q) for s, q in self._seen if q > self._state(s).last_placed - SEEN_BEHIND}
        self.stats.scheduled += 1
        return placement

    def _release(self, speaker: str, now: float | None) -> list[Placement]:
        """Place held clips of `speaker` that nothing earlier is still expected for, in seq order."""
        state = self._state(speaker)
        placed: list[Placement] = []
        for seq in sorted(state.held):
            if any(expected < seq for expected in state.expected):
                break
            clip = state.held.pop(seq)
            placed.append(self._place(clip, time.time() if now is None else now))
        return placed


class TimelineTrack(MediaStreamTrack):
    """A language timeline as an audio track: 20 ms stereo s16 frames paced by the wall clock.

    The language's feed publishes it once into Janus, and every listener of the language subscribes to
    that feed, so they all hear the same speech at the same moment. Between translations it sends silence,
    every 20 ms: it used to send one frame every 400 ms there (as Opus DTX paces its packets, but without
    DTX's marking), and Chromium's jitter buffer took the gaps for network jitter and grew from 60 ms to
    300 ms and more over a meeting (tests/test_browser_echo.py), late speech for every listener.
    """

    kind = "audio"

    def __init__(self, timeline: PlayoutTimeline, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.timeline = timeline
        self._clock = clock
        self._next: int | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now_sample = self.timeline.sample_at(self._clock())
        if self._next is None or now_sample - self._next > MAX_TRACK_LAG_S * self.timeline.options.rate:
            self._next = now_sample
        wait = self.timeline.time_of(self._next) - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        pts = self._next
        self._next += FRAME_SAMPLES
        return stereo_frame(self.timeline.render(pts, FRAME_SAMPLES), pts, self.timeline.options.rate)


def stereo_frame(mono: Samples, pts: int, rate: int = OUTPUT_RATE) -> AudioFrame:
    """An aiortc-ready frame: interleaved stereo s16 (what its Opus encoder expects)."""
    interleaved = np.frombuffer(float_to_pcm16(np.repeat(mono, 2)), dtype="<i2").reshape(1, -1)
    frame = AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame
