"""Media helpers: inbound frames to mono samples, the per-listener mix of original voices, and the
window of recent video frames kept for lip-sync."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from gateway.playout import FRAME_SAMPLES, MAX_TRACK_LAG_S, OUTPUT_RATE, stereo_frame
from pipeline.audio import Samples

# Frames of one source buffered for a listener's mix; more means that source runs ahead: drop the oldest.
MIX_BUFFER_FRAMES = 10


def mono_samples(frame: AudioFrame) -> Samples:
    """Float mono samples of an aiortc audio frame (decoded Opus is interleaved stereo s16 at 48 kHz;
    float frames are taken too). Raises ValueError for any other sample format."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if data.dtype == np.int16:
        scale = 1 / 32768.0
    elif data.dtype == np.float32:
        scale = 1.0
    else:
        raise ValueError(f"unsupported audio sample format {frame.format.name!r}")
    interleaved = data.reshape(-1, channels) if frame.format.is_packed else data.T
    mono: Samples = (interleaved.astype(np.float32).mean(axis=1) * scale).astype(np.float32)
    return mono


class MixTrack(MediaStreamTrack):
    """What one listener hears of the other participants' own voices: each source at its own gain.

    Sources push 20 ms chunks as they arrive; the track is paced by the wall clock and mixes what
    each source has buffered, so a silent or departed source costs nothing."""

    kind = "audio"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._sources: dict[str, deque[Samples]] = {}
        self._start: float | None = None
        self._pts = 0

    def push(self, source: str, samples: Samples, gain: float) -> None:
        if self.readyState != "live" or gain <= 0:
            return
        buffer = self._sources.setdefault(source, deque(maxlen=MIX_BUFFER_FRAMES))
        buffer.append(samples * gain if gain != 1.0 else samples)

    def drop(self, source: str) -> None:
        self._sources.pop(source, None)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._start is None or now - (self._start + self._pts / OUTPUT_RATE) > MAX_TRACK_LAG_S:
            self._start, self._pts = now, 0
        wait = self._start + self._pts / OUTPUT_RATE - now
        if wait > 0:
            await asyncio.sleep(wait)
        frame = stereo_frame(self._mix(), self._pts)
        self._pts += FRAME_SAMPLES
        return frame

    def _mix(self) -> Samples:
        out = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        for buffer in self._sources.values():
            if buffer:
                chunk = buffer.popleft()
                n = min(chunk.size, FRAME_SAMPLES)
                out[:n] += chunk[:n]
        return out


class VideoWindow:
    """The last `size` decoded frames of one participant's camera, with their wall-clock times."""

    def __init__(self, size: int) -> None:
        self.frames: deque[tuple[float, VideoFrame]] = deque(maxlen=size)

    async def fill(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, VideoFrame):
                self.frames.append((time.time(), frame))

    def between(self, start: float, end: float) -> list[VideoFrame]:
        return [frame for at, frame in self.frames if start <= at <= end]
