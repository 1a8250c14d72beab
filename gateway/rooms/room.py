"""Rooms and their participants: who speaks and hears what, their feeds in Janus, the per-language
playout timelines, and each participant's queue of room events (captions, roster, floor, playout)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.media.capture import VideoWindow
from gateway.media.playout import PlayoutOptions, PlayoutTimeline
from gateway.media.video import SegmentVideo
from gateway.media.videoroom import Feed, RoomKeys, new_id
from pipeline import turns
from pipeline.interim import InterimTracker

log = logging.getLogger(__name__)

# Room events queued for a participant whose events socket is not open (yet, or for a moment); the
# oldest give way first: by the time someone reconnects, the newest captions are the ones that matter.
OUTBOX_LIMIT = 500
# How a participant's sockets close when their participation ends (the WebSocket close code): the page joins
# again by itself after CLOSE_REJOIN (a media timeout, a lost connection, the gateway stopping), never after
# the others.
CLOSE_REJOIN = 1000
CLOSE_REMOVED = 4001  # a host removed them
CLOSE_ENDED = 4002  # a host ended the meeting
CLOSE_EXPIRED = 4003  # their join token expired
EXIT_REASONS = {CLOSE_REJOIN: "left", CLOSE_REMOVED: "removed", CLOSE_ENDED: "ended", CLOSE_EXPIRED: "expired"}


def close_reason(reason: str) -> bytes:
    """A WebSocket close frame's reason: at most 123 bytes of UTF-8, cut on a character boundary."""
    return reason.encode()[:123].decode(errors="ignore").encode()


@dataclass(frozen=True)
class Profile:
    """What a participant told us when joining."""

    name: str
    speak: str
    hear: str
    role: str = "participant"
    hear_original: bool = False  # the original voice quietly under the translation
    lipsync: bool = False  # wants lip-synced video of the others (when the service has lip-sync)
    consent: bool = True  # their speech may be processed for translation (else: others hear the original only)
    face_consent: bool = False  # their face may be processed for lip-sync: an explicit choice, off by default
    match_voice: bool = False  # their pitch may be analysed so the translated voice sounds closer to theirs


@dataclass(frozen=True)
class Admission:
    """What let a participant in: their join token's digest (a host's removal bars it) and when it expires
    (wall clock; the session ends with it). Open rooms take no token: nothing to bar, no end."""

    token_digest: str = ""
    expires_at: float = math.inf


@dataclass
class Access:
    """Whether a participant may still reach the room. `end` happens once: every socket of theirs, and the
    Janus sessions opened through them, close on `ended` (gateway/web/proxy.py)."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""  # for people: the page shows it
    code: int = CLOSE_REJOIN

    @property
    def open(self) -> bool:
        return not self.ended.is_set()

    def end(self, reason: str, code: int) -> None:
        if self.open:
            self.reason, self.code = reason, code
            self.ended.set()


@dataclass
class Participant:
    id: str
    room: str
    profile: Profile
    admission: Admission = field(default_factory=Admission)
    access: Access = field(default_factory=Access)
    feed_id: int = field(default_factory=new_id)  # their publisher id in Janus, assigned by the gateway
    ticket: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # proves a socket is theirs
    joined_at: float = field(default_factory=time.monotonic)
    feed: Feed | None = None  # what they publish in Janus, once they do
    muted: bool = False
    camera: bool = True
    media_up: bool = False  # Janus reported one of their peer connections up
    media_lost_at: float | None = None  # monotonic time their feed left Janus (unpublished, or its handle died)
    sockets: int = 0  # open events and media (proxy) sockets
    disconnected_at: float | None = None  # when the last socket closed
    video_window: VideoWindow | None = None  # their recent camera frames, kept only with face consent
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(OUTBOX_LIMIT))
    waiting: list[Any] = field(default_factory=list)  # segments held until this speaker gets the floor
    interim: InterimTracker = field(default_factory=InterimTracker)  # their interim captions (pipeline/interim.py)
    open_seq: int | None = None  # the seq of the segment they are speaking now, allocated at its speech start
    heard_at: float | None = None  # wall time the gateway first received their audio (None: not heard yet)

    def send(self, message: dict[str, Any]) -> None:
        if self.outbox.full():
            self.outbox.get_nowait()
        self.outbox.put_nowait(json.dumps(message, ensure_ascii=False))

    def set_heard(self, at: float | None) -> None:
        """The gateway started (`at`, wall time) or stopped (None) receiving their audio: their page says whether
        they can be heard."""
        self.heard_at = at
        self.send(self.live_state())

    def live_state(self) -> dict[str, Any]:
        return {"type": "live", "live": self.heard_at is not None, "heard_at": self.heard_at}

    def socket_opened(self) -> None:
        self.sockets += 1
        self.disconnected_at = None

    def socket_closed(self) -> None:
        self.sockets = max(0, self.sockets - 1)
        if self.sockets == 0:
            self.disconnected_at = time.monotonic()

    def public(self) -> dict[str, Any]:
        p = self.profile
        streams = [{"mid": s.mid, "type": s.type} for s in self.feed.streams] if self.feed else []
        return {
            "id": self.id,
            "name": p.name,
            "speak": p.speak,
            "hear": p.hear,
            "muted": self.muted,
            "camera": self.camera and any(s["type"] == "video" for s in streams),
            "feed": self.feed_id if self.feed else None,
            "streams": streams,
        }


class Room:
    def __init__(self, name: str, playout: PlayoutOptions, floor: turns.FloorOptions | None = None) -> None:
        self.name = name
        self.opened_at = time.time()  # the meeting's start (wall clock): its transcript's times count from here
        self.keys = RoomKeys()
        self.playout = playout
        self.floor = turns.Room(name, floor or turns.FloorOptions())
        self.participants: dict[str, Participant] = {}
        self.names: dict[str, str] = {}  # participant id -> display name, kept after they leave for late captions
        self.timelines: dict[str, PlayoutTimeline] = {}
        self.feeds: dict[str, int] = {}  # listening language -> the feed id of its translated speech
        self.video = SegmentVideo()  # consenting speakers' frames of recent segments, for the feeds
        self.pending_feeds: dict[int, str] = {}  # feeds published but not yet announced by Janus -> language
        self.pairs_announced: set[tuple[str, str]] = set()  # language pairs the mt stage was told to warm up
        self.ending = False  # a host ended it: no one joins while everyone is let go
        self._seq: dict[str, int] = {}

    def add(self, participant: Participant) -> None:
        self.participants[participant.id] = participant
        self.names[participant.id] = participant.profile.name
        p = participant.profile
        self.floor.join(turns.Participant(participant.id, speaks=p.speak, hears=p.hear))

    def remove(self, participant_id: str) -> tuple[Participant | None, list[turns.FloorEvent]]:
        events = self.floor.leave(participant_id) if participant_id in self.floor.participants else []
        return self.participants.pop(participant_id, None), events

    def by_feed(self, feed_id: int) -> Participant | None:
        return next((p for p in self.participants.values() if p.feed_id == feed_id), None)

    def feed_ids(self) -> set[int]:
        """Feeds a participant of this room may subscribe to: the others' and the language feeds."""
        return {p.feed_id for p in self.participants.values()} | set(self.feeds.values())

    def languages_needing_a_feed(self) -> set[str]:
        """A language needs a feed of translated speech when someone hears it and someone else speaks
        another language: one feed per distinct listening language, whatever the number of listeners."""
        people = list(self.participants.values())
        return {
            p.profile.hear for p in people if any(q.id != p.id and q.profile.speak != p.profile.hear for q in people)
        }

    def language_pairs(self) -> set[tuple[str, str]]:
        """(spoken, heard) for each consenting speaker and each language it would be translated into now."""
        return {
            (p.profile.speak, target)
            for p in self.participants.values()
            if p.profile.consent
            for target in turns.plan_targets(self.floor, p.id)
        }

    def next_seq(self, speaker: str) -> int:
        self._seq[speaker] = self._seq.get(speaker, -1) + 1
        return self._seq[speaker]

    def timeline(self, language: str) -> PlayoutTimeline:
        if language not in self.timelines:
            self.timelines[language] = PlayoutTimeline(self.playout)
        return self.timelines[language]

    def listeners_for(self, language: str, except_id: str = "") -> list[Participant]:
        ids = turns.listeners_for(self.floor, language, except_id or None)
        return [self.participants[i] for i in ids if i in self.participants]

    def floor_state(self) -> dict[str, Any]:
        holder = self.floor.holder
        return {
            "type": "floor",
            "holder": holder,
            "holder_name": self.names.get(holder, "") if holder else "",
            "queue": [self.names.get(i, i) for i in self.floor.queue],
            "queue_ids": list(self.floor.queue),
        }

    def broadcast(self, message: dict[str, Any], except_id: str = "") -> None:
        for participant in self.participants.values():
            if participant.id != except_id:
                participant.send(message)

    def roster(self) -> list[dict[str, Any]]:
        return [p.public() for p in self.participants.values()]

    @property
    def empty(self) -> bool:
        return not self.participants
