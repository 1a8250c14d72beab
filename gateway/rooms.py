"""Rooms and their participants: who speaks and hears what, and the per-language playout timelines."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from gateway.media import MixTrack, VideoWindow
from gateway.playout import PlayoutOptions, PlayoutTimeline
from pipeline import turns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """What a participant told us when joining."""

    name: str
    speak: str
    hear: str
    role: str = "participant"
    hear_original: bool = False  # the original voice quietly under the translation
    lipsync: bool = True  # wants lip-synced video of the others
    consent: bool = True  # their voice and lips may be processed (translation, lip-sync)
    match_voice: bool = False  # their pitch may be analysed so the translated voice sounds closer to theirs


@dataclass
class Participant:
    id: str
    room: str
    profile: Profile
    pc: RTCPeerConnection
    originals: MixTrack = field(default_factory=MixTrack)
    channel: RTCDataChannel | None = None
    outbox: list[str] = field(default_factory=list)  # messages queued until the data channel opens
    muted: bool = False
    camera: MediaStreamTrack | None = None
    video_window: VideoWindow | None = None
    video_slots: dict[str, Participant] = field(default_factory=dict)  # mid -> whose camera that section sends
    waiting: list[Any] = field(default_factory=list)  # segments held until this speaker gets the floor

    def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, ensure_ascii=False)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        else:
            self.outbox.append(text)

    def flush_outbox(self) -> None:
        if self.channel is None:
            return
        for text in self.outbox:
            self.channel.send(text)
        self.outbox.clear()

    def public(self) -> dict[str, Any]:
        p = self.profile
        return {"id": self.id, "name": p.name, "speak": p.speak, "hear": p.hear, "muted": self.muted}


class Room:
    def __init__(self, name: str, playout: PlayoutOptions, floor: turns.FloorOptions | None = None) -> None:
        self.name = name
        self.playout = playout
        self.floor = turns.Room(name, floor or turns.FloorOptions())
        self.participants: dict[str, Participant] = {}
        self.names: dict[str, str] = {}  # participant id -> display name, kept after they leave for late captions
        self.timelines: dict[str, PlayoutTimeline] = {}
        self.relay = MediaRelay()
        self._seq: dict[str, int] = {}

    def add(self, participant: Participant) -> None:
        self.participants[participant.id] = participant
        self.names[participant.id] = participant.profile.name
        p = participant.profile
        self.floor.join(turns.Participant(participant.id, speaks=p.speak, hears=p.hear))

    def remove(self, participant_id: str) -> tuple[Participant | None, list[turns.FloorEvent]]:
        events = self.floor.leave(participant_id) if participant_id in self.floor.participants else []
        return self.participants.pop(participant_id, None), events

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
