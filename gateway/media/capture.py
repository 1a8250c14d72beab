"""Media helpers: inbound frames to mono samples, and the window of recent video frames kept for lip-sync."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from pipeline.audio import Samples


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
