"""The speaker's face on a language's feed, in step with the translated speech.

Only for a speaker who consented to lip-sync: the gateway keeps their recent camera frames (a
VideoWindow), and each of their segments keeps the frames it was spoken over. A language's feed then
shows, while a translated segment plays, that segment's lip-synced frames for the language when they
have come, and otherwise its original frames, stretched over the translated speech: audio never waits
for video, and each fallback is counted. A clip that comes while its segment plays takes over from that
moment, at its place on the speech's timeline. Between translations the feed sends no video at all (no
encoding cost); the page shows the speaker's own camera from Janus then.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from gateway.media.playout import Placement, PlayoutTimeline

FEED_FPS = 15  # what the cameras send (the page asks for 320x240 at 15 fps)
VIDEO_CLOCK = 90_000  # RTP's video clock
# Segments whose frames are kept for playout; older ones have long played (or never will).
KEPT_SEGMENTS = 32
IDLE_POLL_S = 0.05


@dataclass
class VideoStats:
    lipsynced: int = 0  # translated segments whose first frame was lip-synced
    original: int = 0  # began with the original frames: lip-sync late, failed or off
    lipsynced_frames: int = 0  # frames sent: a late clip takes over mid-segment, at its place on the timeline
    original_frames: int = 0


@dataclass
class SegmentFrames:
    original: list[VideoFrame]
    lipsynced: dict[str, list[VideoFrame]] = field(default_factory=dict)  # language -> frames at FEED_FPS


class SegmentVideo:
    """Frames of a room's recent segments, by (speaker, seq): the originals, and lip-synced clips."""

    def __init__(self) -> None:
        self._segments: OrderedDict[tuple[str, int], SegmentFrames] = OrderedDict()

    def keep_original(self, speaker: str, seq: int, frames: list[VideoFrame]) -> None:
        if not frames:
            return
        self._segments[(speaker, seq)] = SegmentFrames(frames)
        while len(self._segments) > KEPT_SEGMENTS:
            self._segments.popitem(last=False)

    def add_lipsynced(self, speaker: str, seq: int, language: str, frames: list[VideoFrame]) -> None:
        segment = self._segments.get((speaker, seq))
        if segment is not None and frames:
            segment.lipsynced[language] = frames

    def get(self, speaker: str, seq: int) -> SegmentFrames | None:
        return self._segments.get((speaker, seq))


def frame_at(segment: SegmentFrames, language: str, offset_s: float, length_s: float) -> tuple[VideoFrame, bool]:
    """The frame to show `offset_s` into a translated segment of `length_s`, and whether it is lip-synced.
    Lip-synced frames are on the translation's own timeline; originals are stretched over it."""
    synced = segment.lipsynced.get(language)
    if synced:
        return synced[min(len(synced) - 1, int(offset_s * FEED_FPS))], True
    frames = segment.original
    return frames[min(len(frames) - 1, int(offset_s / max(length_s, 1e-3) * len(frames)))], False


class FeedVideoTrack(MediaStreamTrack):
    """A language feed's video: the face of the speaker whose translation is playing, at FEED_FPS."""

    kind = "video"

    def __init__(
        self,
        timeline: PlayoutTimeline,
        video: SegmentVideo,
        language: str,
        stats: VideoStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.timeline = timeline
        self.video = video
        self.language = language
        self.stats = stats if stats is not None else VideoStats()  # may be shared by all feeds
        self._clock = clock
        self._origin: float | None = None  # wall time of pts 0
        self._next_at: float | None = None  # when the next frame is due, while a translation plays
        self._counted: tuple[str, int] | None = None  # the segment playing: the feed plays one after another

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._next_at is not None and (wait := self._next_at - self._clock()) > 0:
                await asyncio.sleep(wait)
            now = self._clock()
            placement = self.timeline.playing(now)
            segment = self.video.get(placement.clip.speaker, placement.clip.seq) if placement else None
            if placement is None or segment is None:
                self._next_at = None
                await asyncio.sleep(IDLE_POLL_S)
                continue
            self._next_at = max(now, self._next_at or now) + 1 / FEED_FPS
            return self._frame(placement, segment, now)

    def _frame(self, placement: Placement, segment: SegmentFrames, now: float) -> VideoFrame:
        start = self.timeline.time_of(placement.start_sample)
        length_s = placement.clip.samples.size / self.timeline.options.rate
        source, synced = frame_at(segment, self.language, now - start, length_s)
        self._count(placement, synced)
        # a frame of our own: the stored one may be sent again, by this feed or another language's
        frame = VideoFrame.from_ndarray(source.to_ndarray(format="yuv420p"), format="yuv420p")
        self._origin = self._origin if self._origin is not None else now
        frame.pts = int((now - self._origin) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    def _count(self, placement: Placement, synced: bool) -> None:
        if synced:
            self.stats.lipsynced_frames += 1
        else:
            self.stats.original_frames += 1
        key = (placement.clip.speaker, placement.clip.seq)
        if key == self._counted:
            return
        self._counted = key
        if synced:
            self.stats.lipsynced += 1
        else:
            self.stats.original += 1
