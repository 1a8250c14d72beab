"""A meeting's transcript: on only when someone turns it on, in every language the room listened in, and gone
when its retention ends.

Everything lives in one Redis hash per room, `{prefix}:transcript:{room}`, so it survives a gateway restart
and a room that moves to another node; the gateway keeps nothing of it in memory. The hash holds
- `state:*`: whether it records now, who last turned it on or off, the meeting's start (wall clock), the
  bytes kept and when the cap was reached;
- `u:{speaker}:{seq}`: one utterance per final transcript (JSON: speaker's name, language, words, when);
- `t:{speaker}:{seq}:{lang}`: its translation into each listening language, as the room had them then.
Interims never reach it, and nor does anything the echo guard dropped: that never became a segment.

No key exists until someone turns it on: a meeting without a transcript leaves nothing. While the room is
open the key's expiry is pushed past the retention (a lease, renewed every LEASE_REFRESH_S, so that a gateway
that dies still lets it expire); when the room ends, it expires `retention_s` later. Utterances stop at
`max_bytes`: the page and every download say so. The translations of an utterance already kept are still
added past it, so the cap is exceeded by at most one utterance's translations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from gateway.options import TranscriptOptions
from gateway.rooms.room import Participant, Profile, Room
from pipeline.bus import Bus
from pipeline.messages import SAMPLE_RATE, Message, Transcript, Translation
from pipeline.subtitles import Cue, clock, plain_text, srt_text, vtt

log = logging.getLogger(__name__)

LEASE_S = 60.0  # while its room is open, a transcript expires this long after its retention: renewed in time
LEASE_REFRESH_S = 10.0
QUEUE_LIMIT = 1_000  # results waiting to be written while Redis is slow; the oldest give way
STATE_FIELDS = ("state:on", "state:by", "state:started_at", "state:bytes", "state:full")
ALL = "all"  # `lang=all`: each utterance's original with every translation beneath it
FORMATS: dict[str, tuple[str, Callable[[Sequence[Cue], Sequence[str]], str]]] = {
    "vtt": ("text/vtt", vtt),
    "srt": ("application/x-subrip", srt_text),
    "txt": ("text/plain", plain_text),
}

# Keep one utterance (kind 'u': only while the transcript is on, and under the cap) or one translation (kind
# 't': only of an utterance kept). A field already there (a redelivered result) is left as it is.
# KEYS: the transcript. ARGV: field, value, byte cap, kind, the utterance's field (kind 't'), now.
# Returns 'kept', 'known', 'off', 'orphan', 'full' or 'full_now' (this utterance reached the cap).
_KEEP = """
local key, name, value = KEYS[1], ARGV[1], ARGV[2]
if ARGV[4] == 'u' then
  if redis.call('HGET', key, 'state:on') ~= '1' then return 'off' end
elseif redis.call('HEXISTS', key, ARGV[5]) == 0 then
  return 'orphan'
end
if redis.call('HEXISTS', key, name) == 1 then return 'known' end
local size = #name + #value
local used = tonumber(redis.call('HGET', key, 'state:bytes') or '0')
if ARGV[4] == 'u' and used + size > tonumber(ARGV[3]) then
  if redis.call('HSETNX', key, 'state:full', ARGV[6]) == 1 then return 'full_now' end
  return 'full'
end
redis.call('HSET', key, name, value)
redis.call('HINCRBY', key, 'state:bytes', size)
return 'kept'
"""

# Turn recording on or off. Off creates nothing: without a transcript there is no key.
# KEYS: the transcript. ARGV: '1' or '0', by whom (name), their id, now, the meeting's start, expiry (ms).
_TURN = """
if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state:on', ARGV[1], 'state:by', ARGV[2], 'state:by_id', ARGV[3],
           'state:changed_at', ARGV[4])
redis.call('HSETNX', KEYS[1], 'state:started_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""


class TranscriptRefused(Exception):
    """A request the transcript must refuse; the message says why, for the person who asked."""


def may_toggle(profile: Profile, tokens_required: bool) -> bool:
    """With tokens, only a host turns the transcript on or off; in open rooms, anyone in the room."""
    return not tokens_required or profile.role == "host"


@dataclass(frozen=True)
class TranscriptState:
    exists: bool = False
    on: bool = False
    by: str = ""  # who last turned it on or off
    started_at: float = 0.0  # the meeting's start: times in the transcript count from it
    bytes: int = 0
    full_at: float | None = None  # when an utterance first did not fit under the cap

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> TranscriptState:
        full = fields.get("state:full")
        return cls(
            exists=bool(fields),
            on=fields.get("state:on") == "1",
            by=fields.get("state:by", ""),
            started_at=float(fields.get("state:started_at", 0.0)),
            bytes=int(fields.get("state:bytes", 0)),
            full_at=float(full) if full else None,
        )

    def notice(self, max_bytes: int, can_toggle: bool) -> dict[str, Any]:
        """What the page shows: whether it records, who turned it on, and whether it is full."""
        if self.on and self.full_at is not None:
            message = f"Transcript full ({megabytes(max_bytes)}): what is said now is not recorded"
        elif self.on:
            message = f"Transcript on · turned on by {self.by}"
        else:
            message = f"Transcript off · turned off by {self.by}" if self.exists else ""
        return {
            "type": "transcript",
            "on": self.on,
            "by": self.by,
            "exists": self.exists,
            "full": self.full_at is not None,
            "can_toggle": can_toggle,
            "message": message,
        }

    def notes(self, max_bytes: int) -> list[str]:
        """What a download says besides the utterances: that the cap cut it short, and when."""
        if self.full_at is None:
            return []
        at = clock(self.full_at - self.started_at)
        return [f"The transcript reached its limit of {megabytes(max_bytes)} at {at}: later words are not in it."]


@dataclass(frozen=True)
class Utterance:
    """One final caption: who said what in which language, when, and its translations."""

    speaker: str
    language: str
    text: str
    start: float  # wall clock
    end: float
    translations: dict[str, str] = field(default_factory=dict)

    def cue(self, lang: str, started_at: float) -> Cue:
        """In `lang`: the original where it was spoken in it, else its translation; one not translated into
        `lang` (nobody heard it then) shows its original with its language. ALL: the original, then each
        translation beneath it."""
        labelled = f"[{self.language}] {self.text}"
        if lang == ALL:
            text = "\n".join([labelled, *(f"[{code}] {words}" for code, words in sorted(self.translations.items()))])
        elif lang == self.language:
            text = self.text
        else:
            text = self.translations.get(lang, labelled)
        return Cue(self.start - started_at, self.end - started_at, text, self.speaker)


@dataclass(frozen=True)
class Export:
    body: str
    content_type: str
    filename: str
    full: bool


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def megabytes(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB" if size >= 1_048_576 else f"{size} bytes"


class Transcripts:
    """The rooms' transcripts in Redis: turned on and off from the page, fed with final results, read by the API."""

    def __init__(self, bus: Bus, options: TranscriptOptions, rooms: dict[str, Room], tokens_required: bool) -> None:
        self.bus = bus
        self.options = options
        self.rooms = rooms
        self.tokens_required = tokens_required
        self._keep = bus.client.register_script(_KEEP)
        self._turn = bus.client.register_script(_TURN)
        self._queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_LIMIT)

    def key(self, room: str) -> str:
        return self.bus.key("transcript", room)

    # -- turning it on and off ---------------------------------------------------------------------
    async def turn(self, participant: Participant, on: bool) -> TranscriptState:
        """`participant` turns their room's transcript on or off; every page in the room is told."""
        if not may_toggle(participant.profile, self.tokens_required):
            raise TranscriptRefused("only a host can turn the transcript on or off")
        room = self.rooms.get(participant.room)
        if room is None:
            raise TranscriptRefused("the room has ended")
        lease_ms = round((self.options.retention_s + LEASE_S) * 1000)
        args = ["1" if on else "0", participant.profile.name, participant.id, time.time(), room.opened_at, lease_ms]
        await self._turn(keys=[self.key(room.name)], args=args)
        state = await self.state(room.name)
        log.info("%s turned the transcript of room %s %s", participant.id, room.name, "on" if on else "off")
        self.announce(room, state)
        return state

    async def state(self, room: str) -> TranscriptState:
        fields = await self.bus.client.hmget(self.key(room), *STATE_FIELDS)
        present = {name: text(raw) for name, raw in zip(STATE_FIELDS, fields, strict=True) if raw is not None}
        return TranscriptState.from_hash(present)

    def announce(self, room: Room, state: TranscriptState) -> None:
        for participant in room.participants.values():
            self.tell(participant, state)

    def tell(self, participant: Participant, state: TranscriptState) -> None:
        participant.send(state.notice(self.options.max_bytes, may_toggle(participant.profile, self.tokens_required)))

    async def greet(self, participant: Participant) -> None:
        """A page that (re)connects learns at once whether the transcript is on, and who turned it on."""
        try:
            self.tell(participant, await self.state(participant.room))
        except RedisError as exc:
            log.warning("could not read the transcript state of room %s: %s", participant.room, exc)

    # -- the room's life ---------------------------------------------------------------------------
    async def opened(self, room: str) -> None:
        """The room is open (again): its transcript, if any, stays while it is."""
        await self._expire([room], self.options.retention_s + LEASE_S)

    async def ended(self, room: str) -> None:
        """The room ended: its transcript, if any, goes once the retention has passed."""
        await self._expire([room], self.options.retention_s)

    async def keep_open_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH_S)
            await self._expire(list(self.rooms), self.options.retention_s + LEASE_S)

    async def _expire(self, rooms: list[str], seconds: float) -> None:
        try:
            async with self.bus.client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.pexpire(self.key(room), round(seconds * 1000))  # no-op without a transcript
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not set the expiry of %d transcript(s): %s", len(rooms), exc)

    # -- recording ---------------------------------------------------------------------------------
    def offer(self, message: Message) -> None:
        """A result for the rooms: final transcripts and translations of this gateway's rooms are written, in
        order, by `record_forever` (a translation needs its utterance written first)."""
        if not isinstance(message, Transcript | Translation) or message.room not in self.rooms:
            return
        if not message.text.strip():
            return
        if self._queue.full():
            dropped = self._queue.get_nowait()
            log.warning("transcript writer behind: %s not recorded", dropped.log_context)
        self._queue.put_nowait(message)

    async def record_forever(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self.record(message)
            except RedisError as exc:
                log.warning("could not record %s in the transcript: %s", message.log_context, exc)

    async def record(self, message: Message) -> str:
        """Write one final result; returns what became of it (see _KEEP)."""
        utterance = f"u:{message.speaker}:{message.seq}"
        if isinstance(message, Transcript):
            name, value, kind = utterance, json.dumps(self._utterance(message), ensure_ascii=False), "u"
        elif isinstance(message, Translation):
            name, value, kind = f"t:{message.speaker}:{message.seq}:{message.language}", message.text, "t"
        else:
            return "ignored"
        args: list[str | int | float] = [name, value, self.options.max_bytes, kind, utterance, time.time()]
        outcome = text(await self._keep(keys=[self.key(message.room)], args=args))
        room = self.rooms.get(message.room)
        if outcome == "full_now" and room is not None:
            log.warning("the transcript of room %s reached its cap of %d bytes", message.room, self.options.max_bytes)
            self.announce(room, await self.state(message.room))
        return outcome

    def _utterance(self, message: Transcript) -> dict[str, Any]:
        room = self.rooms.get(message.room)
        end = message.stamp("captured") or time.time()  # the segment's last sample, as the gateway heard it
        start = end - (message.end_sample - message.start_sample) / SAMPLE_RATE
        name = room.names.get(message.speaker, message.speaker) if room else message.speaker
        return {"speaker": name, "language": message.language, "text": message.text, "start": start, "end": end}

    # -- reading -----------------------------------------------------------------------------------
    async def read(self, room: str) -> tuple[TranscriptState, list[Utterance]] | None:
        """The room's transcript in the order it was spoken; None when there is none (never on, or expired)."""
        raw = await self.bus.client.hgetall(self.key(room))
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        utterances: dict[str, Utterance] = {}
        for name, value in fields.items():
            if name.startswith("u:"):
                utterances[name[2:]] = Utterance(**json.loads(value))
        for name, value in fields.items():
            if name.startswith("t:"):
                segment, _, language = name[2:].rpartition(":")
                if segment in utterances:
                    utterances[segment].translations[language] = value
        return TranscriptState.from_hash(fields), sorted(utterances.values(), key=lambda u: (u.start, u.end))

    async def export(self, room: str, lang: str, fmt: str) -> Export | None:
        """The transcript as a file in `lang` (or ALL) and `fmt` (a key of FORMATS); None when there is none."""
        found = await self.read(room)
        if found is None:
            return None
        state, utterances = found
        content_type, write = FORMATS[fmt]
        body = write([u.cue(lang, state.started_at) for u in utterances], state.notes(self.options.max_bytes))
        return Export(body, content_type, f"{room}-transcript-{lang}.{fmt}", state.full_at is not None)
