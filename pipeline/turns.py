"""Floor control per room: one active speaker at a time, and one pipeline run per target language.

Turn-taking is what makes the cost linear: only the floor holder's segments are translated, each
once per distinct language among the listeners (k <= N-1), then fanned out to every listener of it.

Rules (all times in seconds from an injectable clock, so tests are deterministic):
- `request(p)`: free floor -> granted; held by someone else -> p joins a FIFO queue (once).
- `release(p)`: the holder gives the floor up; the head of the queue gets it. A queued participant who
  releases leaves the queue.
- Silence timeout: the holder who has not spoken for `silence_timeout_s` (SILENCE_TIMEOUT_S) loses the
  floor at the next `tick` or `submit`; the queue moves on.
- Speech from someone without the floor, while another holds it (`submit`), follows `overlap`:
  - `queue` (default): the speaker is queued and their segment WAITS: the gateway keeps it and submits
    it again when a `granted` event names that speaker, so nothing is lost and nothing overlaps.
  - `captions_only`: the segment is transcribed and shown as captions but not translated into speech;
    the speaker is not queued (an explicit `request` still queues).
- Speech on a free floor takes it (no button needed): at the onset via `heard`, or at `submit`.
- `leave(p)` releases p's floor and drops p's queued request.

Every change returns `FloorEvent`s (granted, released, queued, dequeued) for the room page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.messages import ControlEvent

SILENCE_TIMEOUT_S = 3.0  # longer than any closing pause, short enough not to stall the queue

Clock = Callable[[], float]


class OverlapPolicy(StrEnum):
    QUEUE = "queue"
    CAPTIONS_ONLY = "captions_only"


class Disposition(StrEnum):
    TRANSLATE = "translate"  # run ASR, then MT and TTS once per target language
    CAPTIONS_ONLY = "captions_only"  # run ASR only: captions in the speaker's language
    WAIT = "wait"  # hold the segment until this speaker is granted the floor


@dataclass(frozen=True)
class FloorOptions:
    silence_timeout_s: float = SILENCE_TIMEOUT_S
    overlap: OverlapPolicy = OverlapPolicy.QUEUE


@dataclass(frozen=True)
class Participant:
    id: str
    speaks: str  # language code of what they say
    hears: str  # language code they want to hear


@dataclass(frozen=True)
class FloorEvent:
    action: str  # "granted", "released", "queued", "dequeued"
    participant: str
    at: float
    reason: str = ""  # e.g. "request", "speech", "silence_timeout", "left", "released"

    def to_message(self, room: str, seq: int = 0) -> ControlEvent:
        return ControlEvent(room=room, speaker=self.participant, seq=seq, action=self.action, detail=self.reason)


@dataclass(frozen=True)
class SegmentPlan:
    """What to do with one segment: how far down the pipeline, and into which languages."""

    disposition: Disposition
    targets: tuple[str, ...] = ()
    events: tuple[FloorEvent, ...] = ()


@dataclass
class Room:
    id: str
    options: FloorOptions = field(default_factory=FloorOptions)
    clock: Clock = time.monotonic
    participants: dict[str, Participant] = field(default_factory=dict)
    holder: str | None = None
    queue: list[str] = field(default_factory=list)
    last_speech_at: float = 0.0  # when the holder was last heard (or granted)

    # -- membership -------------------------------------------------------------------------------
    def join(self, participant: Participant) -> None:
        self.participants[participant.id] = participant

    def leave(self, participant_id: str, now: float | None = None) -> list[FloorEvent]:
        now = self._now(now)
        events = self._dequeue(participant_id, now, "left")
        if self.holder == participant_id:
            events += self._release(now, "left")
        self.participants.pop(participant_id, None)
        return events

    # -- floor ------------------------------------------------------------------------------------
    def request(self, participant_id: str, now: float | None = None, reason: str = "request") -> list[FloorEvent]:
        now = self._now(now)
        self._require(participant_id)
        events = self.tick(now)
        if self.holder is None:
            return [*events, self._grant(participant_id, now, reason)]
        if self.holder == participant_id or participant_id in self.queue:
            return events
        self.queue.append(participant_id)
        return [*events, FloorEvent("queued", participant_id, now, reason)]

    def release(self, participant_id: str, now: float | None = None) -> list[FloorEvent]:
        now = self._now(now)
        if self.holder == participant_id:
            return self._release(now, "released")
        return self._dequeue(participant_id, now, "released")

    def heard(self, participant_id: str, now: float | None = None) -> list[FloorEvent]:
        """The segmenter says this participant is speaking: keeps the holder's floor alive, and takes a
        free floor at the speech onset (not only when the first segment closes)."""
        now = self._now(now)
        events = self.tick(now)
        if self.holder is None and participant_id in self.participants:
            events.append(self._grant(participant_id, now, "speech"))
        elif self.holder == participant_id:
            self.last_speech_at = now
        return events

    def tick(self, now: float | None = None) -> list[FloorEvent]:
        """Release a holder silent for longer than the timeout; call it periodically."""
        now = self._now(now)
        if self.holder is not None and now - self.last_speech_at > self.options.silence_timeout_s:
            return self._release(now, "silence_timeout")
        return []

    # -- segments ---------------------------------------------------------------------------------
    def submit(self, speaker_id: str, now: float | None = None) -> SegmentPlan:
        """A segment from `speaker_id` is ready: decide whether and into what it is translated."""
        now = self._now(now)
        self._require(speaker_id)
        events = self.tick(now)
        if self.holder is None:
            events.append(self._grant(speaker_id, now, "speech"))
        if self.holder == speaker_id:
            self.last_speech_at = now
            return SegmentPlan(Disposition.TRANSLATE, plan_targets(self, speaker_id), tuple(events))
        if self.options.overlap is OverlapPolicy.CAPTIONS_ONLY:
            return SegmentPlan(Disposition.CAPTIONS_ONLY, (), tuple(events))
        events += self.request(speaker_id, now, "speech")
        return SegmentPlan(Disposition.WAIT, (), tuple(events))

    # -- internals --------------------------------------------------------------------------------
    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _require(self, participant_id: str) -> None:
        if participant_id not in self.participants:
            raise KeyError(f"{participant_id!r} has not joined room {self.id!r}")

    def _grant(self, participant_id: str, now: float, reason: str) -> FloorEvent:
        self.holder = participant_id
        self.last_speech_at = now
        return FloorEvent("granted", participant_id, now, reason)

    def _release(self, now: float, reason: str) -> list[FloorEvent]:
        assert self.holder is not None
        events = [FloorEvent("released", self.holder, now, reason)]
        self.holder = None
        if self.queue:
            events.append(self._grant(self.queue.pop(0), now, "queue"))
        return events

    def _dequeue(self, participant_id: str, now: float, reason: str) -> list[FloorEvent]:
        if participant_id not in self.queue:
            return []
        self.queue.remove(participant_id)
        return [FloorEvent("dequeued", participant_id, now, reason)]


def plan_targets(room: Room, speaker_id: str) -> tuple[str, ...]:
    """Distinct languages to translate `speaker_id` into: one pipeline run each, sorted for stable plans.

    The speaker is not a listener of themself, and listeners who hear the speaker's language get the
    original audio and captions, not a translation."""
    source = room.participants[speaker_id].speaks
    return tuple(sorted({p.hears for p in room.participants.values() if p.id != speaker_id and p.hears != source}))


def listeners_for(room: Room, language: str, speaker_id: str | None = None) -> tuple[str, ...]:
    """Who receives the run for `language` (the fan-out), the speaker excluded."""
    return tuple(sorted(p.id for p in room.participants.values() if p.hears == language and p.id != speaker_id))
