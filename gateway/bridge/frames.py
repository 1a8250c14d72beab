"""A consenting speaker's frames out to the lipsync stage, and its lip-synced clips back to the feeds.

Out: when a segment closes for a speaker who consented (their VideoWindow exists only then), while the
service level allows lip-sync and some listener of a target language asked for lip-synced video, the
segment's frames are JPEG-encoded within the size bound (pipeline/frames.py) in a worker thread and
stored under the segment's key; the segment is published with `has_frames` at once, without waiting
for the store: the lipsync stage runs after ASR, MT and TTS, long after the store has finished, and a
store that failed only means the original frames play. Nothing else sends a frame out of the gateway.

Back: a VideoClip from `results` is decoded in a worker thread, put on the feed's frame rate along its
timestamps, and handed to the room's SegmentVideo for its language (gateway/media/video.py plays it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from av import VideoFrame
from redis.exceptions import RedisError

from gateway.media.video import FEED_FPS
from gateway.rooms.room import Participant, Room
from pipeline.bus import Bus
from pipeline.frames import Frame, FrameError, decode_frames, make_clip, store_frames
from pipeline.messages import VideoClip

log = logging.getLogger(__name__)


@dataclass
class FrameStats:
    stored: int = 0  # segments whose frames went to the lipsync stage
    store_failed: int = 0  # could not be encoded or stored: the original frames play
    clips: int = 0  # lip-synced clips received and handed to a feed
    clips_failed: int = 0  # clips that could not be decoded, or whose room is gone


def wants_lipsync(room: Room, speaker: Participant, targets: Sequence[str]) -> bool:
    """Whether this speaker's segment should be lip-synced: they consented, and a listener of one of
    its target languages asked for lip-synced video."""
    if not speaker.profile.face_consent or speaker.video_window is None:
        return False
    return any(
        other.profile.lipsync and other.profile.hear in targets
        for other in room.participants.values()
        if other.id != speaker.id
    )


def encode_segment(room: str, speaker: str, seq: int, frames: Sequence[VideoFrame]) -> VideoClip:
    """The segment's own frames as a VideoClip (language empty, times from its first frame). Blocking."""
    known = [float(frame.time) for frame in frames if frame.time is not None]
    if len(known) == len(frames) and all(a <= b for a, b in itertools.pairwise(known)):  # the camera's own clock
        times = [t - known[0] for t in known]
    else:
        times = [i / FEED_FPS for i in range(len(frames))]
    rgb = [np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8) for frame in frames]
    return make_clip(room, speaker, seq, rgb, times)


def feed_frames(clip: VideoClip) -> list[VideoFrame]:
    """A lip-synced clip's frames at FEED_FPS from the start of the speech: at each feed tick, the
    clip's latest frame by then. Blocking."""
    frames = decode_frames(clip)
    if not frames:
        return []
    times = np.asarray(clip.timestamps_s, dtype=np.float64)
    ticks = np.arange(int(np.ceil((times[-1] + 1e-6) * FEED_FPS)) or 1) / FEED_FPS
    picks = np.clip(np.searchsorted(times, ticks, side="right") - 1, 0, len(frames) - 1)
    converted: dict[int, VideoFrame] = {}
    return [converted.setdefault(int(i), _yuv(frames[int(i)])) for i in picks]


def _yuv(frame: Frame) -> VideoFrame:
    return VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")


class FramePath:
    """The gateway's two ends of the lip-sync path, with their counters."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.stats = FrameStats()
        self._tasks: set[asyncio.Task[None]] = set()  # kept so that they are not collected mid-flight

    def send(self, room: Room, speaker: str, seq: int, frames: Sequence[VideoFrame]) -> None:
        """Encode and store one segment's frames in the background."""
        self._spawn(self._store(room.name, speaker, seq, list(frames)))

    def receive(self, rooms: dict[str, Room], clip: VideoClip) -> None:
        """Decode a lip-synced clip in the background and give it to its room's feed of its language."""
        self._spawn(self._take(rooms, clip))

    async def drain(self) -> None:
        """Wait for the stores and decodes under way (the tests do)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _store(self, room: str, speaker: str, seq: int, frames: list[VideoFrame]) -> None:
        try:
            clip = await asyncio.to_thread(encode_segment, room, speaker, seq, frames)
            await store_frames(self.bus.client, self.bus.options.prefix, clip)
            self.stats.stored += 1
        except (FrameError, RedisError, OSError) as exc:
            self.stats.store_failed += 1
            log.warning("frames of room=%s speaker=%s seq=%d not stored (%s): originals play", room, speaker, seq, exc)

    async def _take(self, rooms: dict[str, Room], clip: VideoClip) -> None:
        try:
            frames = await asyncio.to_thread(feed_frames, clip)
        except FrameError as exc:
            self.stats.clips_failed += 1
            log.warning("%s %s: unreadable lip-synced clip (%s): originals play", clip.log_context, clip.language, exc)
            return
        room = rooms.get(clip.room)
        if room is None or room.video.get(clip.speaker, clip.seq) is None:
            self.stats.clips_failed += 1  # the room emptied, or the segment is long gone
            return
        room.video.add_lipsynced(clip.speaker, clip.seq, clip.language, frames)
        self.stats.clips += 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
