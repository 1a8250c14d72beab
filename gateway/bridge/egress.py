"""Egress, the second half of the bridge: the workers' results back into the room.

    `results` stream (gateway/rooms/results.py) -> captions to each listener's events socket, in their language
                                          -> translated speech onto the language's playout timeline
    timeline -> one aiortc publisher per (room, listening language) in Janus: the language's feed

Every listener of a language subscribes to the same feed straight from Janus, so a room costs one
Opus encode per distinct listening language (k), whatever the number of listeners. A feed's video
shows, while a consenting speaker's translation plays, their face in step with it (gateway/media/video.py);
otherwise it sends nothing, and listeners see each speaker's own camera from Janus.
"""

from __future__ import annotations

import contextlib
import logging

from aiortc import RTCConfiguration

from gateway.media.janus import JanusClient, JanusClosed, JanusError
from gateway.media.playout import TimelineTrack
from gateway.media.video import FeedVideoTrack, VideoStats
from gateway.media.videoroom import Publisher, new_id
from gateway.rooms.room import Room

log = logging.getLogger(__name__)

FEED_DISPLAY = "BabelRoom translation ({language})"


class Egress:
    def __init__(self, rooms: dict[str, Room]) -> None:
        self.rooms = rooms
        self.video_stats = VideoStats()  # all feeds' segments, by the frames they showed
        self._feeds: dict[tuple[str, str], Publisher] = {}
        self._playing: dict[tuple[str, str], tuple[str, int] | None] = {}

    # -- playout notices --------------------------------------------------------------------------
    def tick(self, room: Room, now: float) -> None:
        """Advance each timeline; tell its listeners when a translation starts or stops playing."""
        for language, timeline in room.timelines.items():
            timeline.poll(now)
            timeline.prune(now)
            placement = timeline.playing(now)
            current = (placement.clip.speaker, placement.clip.seq) if placement else None
            if self._playing.get((room.name, language)) == current:
                continue
            self._playing[(room.name, language)] = current
            notice = {
                "type": "playout",
                "lang": language,
                "playing": current is not None,
                "id": f"{current[0]}:{current[1]}" if current else "",
                "speaker_id": current[0] if current else "",
                "speaker": room.names.get(current[0], "") if current else "",
                "video": current is not None and room.video.get(*current) is not None,  # the feed shows their face
                "stats": vars(timeline.stats),
            }
            for listener in room.listeners_for(language):
                listener.send(notice)

    # -- language feeds ---------------------------------------------------------------------------
    async def update_feeds(self, client: JanusClient, room: Room, rtc: RTCConfiguration) -> bool:
        """Publish a feed for every language the room needs and stop the others; True if any changed."""
        wanted = room.languages_needing_a_feed()
        changed = False
        for language in sorted((set(room.feeds) | set(room.pending_feeds.values())) - wanted):
            await self.close_feed(room, language)
            changed = True
        for language in sorted(wanted - set(room.feeds)):
            if (room.name, language) in self._feeds:
                continue  # being published, or by a concurrent update
            changed = await self._open_feed(client, room, language, rtc) or changed
        return changed

    async def _open_feed(self, client: JanusClient, room: Room, language: str, rtc: RTCConfiguration) -> bool:
        """Publish the language's timeline into Janus; the room learns its feed id once Janus has it."""
        feed_id = new_id()
        publisher = Publisher(rtc)
        self._feeds[(room.name, language)] = publisher
        try:
            timeline = room.timeline(language)
            tracks = [TimelineTrack(timeline), FeedVideoTrack(timeline, room.video, language, self.video_stats)]
            await publisher.start(client, room.keys, feed_id, FEED_DISPLAY.format(language=language), tracks)
        except (JanusError, JanusClosed, TimeoutError) as exc:
            log.error("room %s: could not publish the %s feed: %s", room.name, language, exc)
            self._feeds.pop((room.name, language), None)
            await publisher.stop()
            return False
        room.pending_feeds[feed_id] = language  # listed in room.feeds once Janus announces it
        log.info("room %s: publishing the %s feed (%d)", room.name, language, feed_id)
        return True

    async def close_feed(self, room: Room, language: str) -> None:
        room.feeds.pop(language, None)
        for feed_id in [f for f, lang in room.pending_feeds.items() if lang == language]:
            room.pending_feeds.pop(feed_id)
        publisher = self._feeds.pop((room.name, language), None)
        if publisher is not None:
            with contextlib.suppress(Exception):  # Janus may be gone already; the peer is closed either way
                await publisher.stop()

    async def close_room(self, room: Room) -> None:
        for language in {*room.feeds, *room.pending_feeds.values()}:
            await self.close_feed(room, language)
        for key in [k for k in self._playing if k[0] == room.name]:
            self._playing.pop(key, None)
