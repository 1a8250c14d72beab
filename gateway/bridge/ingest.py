"""Ingest, the first half of the bridge: a participant's voice out of Janus and onto the bus.

    Janus -> RTP forwarded to the gateway (gateway/media/rtp.py) -> Opus decoded, mono 48 kHz
    -> their Segmenter (16 kHz, closed at a natural pause)
    -> the room's floor (translate, captions only, or wait for the floor)
    -> a SpeechSegment on the `asr` stream, targets = the listeners' distinct languages

While the floor holder speaks, every `interim.interval_s` the open segment's audio so far goes out as an
InterimRequest (`asr_interim` stream, pipeline/interim.py); its seq is allocated when the speech starts,
so the final segment shares it and its caption replaces the interim ones. When someone joins, a WarmUp hint
names the language pairs the room newly needs, so the mt stage starts them before anyone speaks. The segmenter
runs in a thread:
Smart Turn may take tens of milliseconds, which the event loop (RTP, sockets) must not wait for.

Segments that cannot be published while Redis is away are held and published in order once it is
back; one held longer than OUTBOX_MAX_AGE_S is dropped and counted, its moment having passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from redis.exceptions import RedisError

from gateway.bridge.echo import EchoGuard
from gateway.bridge.frames import FramePath, wants_lipsync
from gateway.media.capture import mono_samples
from gateway.media.playout import OUTPUT_RATE
from gateway.options import GatewayOptions
from gateway.rooms.overload import OverloadMonitor
from gateway.rooms.room import Participant, Room
from pipeline import turns
from pipeline.audio import resample
from pipeline.bus import Bus
from pipeline.messages import SAMPLE_RATE, SpeechSegment, WarmUp
from pipeline.segmenter import Segment, Segmenter

log = logging.getLogger(__name__)


class AudioSource(Protocol):
    """Where a participant's audio frames come from (gateway/media/rtp.py), and when each was spoken."""

    async def recv(self) -> Any: ...

    def end_time(self, frame: AudioFrame) -> float: ...


REDIS_RETRY_S = 1.0
OUTBOX_MAX_AGE_S = 30.0


@dataclass
class IngestStats:
    segments_published: int = 0
    segments_waiting: int = 0  # held until their speaker got the floor
    segments_held: int = 0  # held while Redis was unavailable, published later
    segments_dropped: int = 0  # held too long and given up
    interim_requests: int = 0


class Ingest:
    def __init__(self, bus: Bus, options: GatewayOptions, overload: OverloadMonitor, frames: FramePath) -> None:
        self.bus = bus
        self.options = options
        self.overload = overload  # decides, per segment, how much service it gets (speech, lip-sync)
        self.frames = frames  # a consenting speaker's frames out to the lipsync stage
        self.stats = IngestStats()
        self.echo = EchoGuard(options.echo)  # what each participant was played comes back as echo: not theirs
        self._outbox: deque[tuple[Room, SpeechSegment, float]] = deque()

    async def listen(self, room: Room, participant: Participant, track: AudioSource) -> None:
        """Segment one participant's audio until their track ends."""
        try:
            await self._segment(room, participant, track)
        finally:
            self.echo.forget(participant.id)
            if participant.heard_at is not None:
                participant.set_heard(None)

    async def _segment(self, room: Room, participant: Participant, track: AudioSource) -> None:
        segmenter = Segmenter(self.options.segmenter, input_rate=OUTPUT_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if participant.heard_at is None:  # their first audio: their page says they can be heard
                participant.set_heard(time.time())
                log.info(
                    "first audio of %s: %.2f s after joining",
                    participant.profile.name,
                    time.monotonic() - participant.joined_at,
                )
            if not isinstance(frame, AudioFrame):
                continue
            try:
                samples = mono_samples(frame)
            except ValueError as exc:  # one bad frame is skipped; the participant's audio carries on
                log.warning("skipped an audio frame from %s: %s", participant.profile.name, exc)
                continue
            if frame.sample_rate != OUTPUT_RATE:
                samples = resample(samples, frame.sample_rate, OUTPUT_RATE)
            if participant.muted:  # the page mutes its track too; this covers the frames in flight
                samples = samples * 0.0
            # spoken at: not when this loop got to it, which can be seconds later on a busy gateway
            now = track.end_time(frame)
            self.echo.heard(participant.id, samples, now)  # the others who hear this voice may echo it
            if segmenter.speaking and segmenter.turn_detection:  # Smart Turn may judge a pause: 12-80 ms
                segments = await asyncio.to_thread(segmenter.feed, samples)
            else:  # no model runs between segments: a thread hop per 20 ms frame would cost more than the frame
                segments = segmenter.feed(samples)
            if participant.id not in room.participants:
                return  # left
            speaking = segmenter.speaking and not self._echo_so_far(room, participant, segmenter, now)
            if speaking:  # an echo takes no floor and keeps none
                await self.floor_events(room, room.floor.heard(participant.id))
            for segment in segments:
                captured_at = now - (segmenter.position_sample - segment.end_sample) / SAMPLE_RATE
                await self.submit(room, participant, segment, captured_at, self._take_seq(room, participant))
            if speaking:
                await self.request_interim(room, participant, segmenter, now)

    async def request_interim(self, room: Room, participant: Participant, segmenter: Segmenter, now: float) -> None:
        """The floor holder's open segment so far, for interim captions, when a request is due."""
        open_audio = segmenter.open_audio()
        if participant.open_seq is None:  # speech started: the seq its final segment will carry
            participant.open_seq = room.next_seq(participant.id)
        if open_audio is None or room.floor.holder != participant.id or not participant.profile.consent:
            return
        if self._pausing(segmenter):
            return
        targets = turns.plan_targets(room.floor, participant.id)
        start_sample, audio = open_audio
        request = participant.interim.request(
            room.name, participant.id, participant.open_seq, participant.profile.speak, targets, start_sample, audio
        )
        if request is None or self._outbox:
            return
        request = dataclasses.replace(request, node=self.options.node.id)  # its drafts come back to this node
        try:
            await self.bus.publish(request.stamped("captured", now).stamped("published"))
            self.stats.interim_requests += 1
        except RedisError:  # an interim caption can be skipped: the final one carries the same words
            log.debug("interim request for %s not sent: redis unavailable", request.log_context)

    async def warm_up(self, room: Room, participant: Participant) -> None:
        """Someone joined: the language pairs the room needs that the mt stage was not told of yet, so it
        starts them before anyone speaks (a cold Apertium pair took 1.5-6 s, longer than a short utterance)."""
        pairs = room.language_pairs() - room.pairs_announced
        if not pairs:
            return
        hint = WarmUp(room=room.name, speaker=participant.id, seq=0, pairs=tuple(sorted(pairs)))
        try:
            await self.bus.publish(hint.stamped("published"))
            room.pairs_announced |= pairs
        except RedisError:  # only a hint: the pairs start on first use instead
            log.debug("warm-up hint for %s not sent: redis unavailable", room.name)

    def _echo_so_far(self, room: Room, participant: Participant, segmenter: Segmenter, now: float) -> bool:
        """The open segment is (or may yet be) an echo of what the participant was played."""
        open_audio = segmenter.open_audio() if self.echo.options.enabled else None
        return open_audio is not None and self.echo.onset_is_echo(room, participant, *open_audio, now)

    def _pausing(self, segmenter: Segmenter) -> bool:
        last_voiced = segmenter.last_speech_sample
        paused = segmenter.position_sample - (last_voiced if last_voiced is not None else 0)
        return paused > self.options.interim.max_pause_s * SAMPLE_RATE

    @staticmethod
    def _take_seq(room: Room, participant: Participant) -> int:
        """The closed segment's seq: the one allocated at its speech start (shared with its interims)."""
        seq = participant.open_seq if participant.open_seq is not None else room.next_seq(participant.id)
        participant.open_seq = None
        return seq

    async def submit(
        self, room: Room, participant: Participant, segment: Segment, captured_at: float, seq: int
    ) -> None:
        if not participant.profile.consent:
            return  # no consent to processing their speech: the others hear the original voice only
        committed = participant.interim.close(seq)
        verdict = self.echo.check(room, participant, segment.samples, captured_at)
        if verdict is not None and verdict.echo:
            return  # what they were played, back through their microphone: not their speech
        if verdict is not None and verdict.cleaned is not None:  # their words over the echo: only their words
            segment = dataclasses.replace(segment, samples=verdict.cleaned)
        if verdict is not None and verdict.leading_samples:  # their words right after the echo's tail: only theirs
            segment = without_start(segment, verdict.leading_samples)
        plan = room.floor.submit(participant.id)
        if plan.disposition is turns.Disposition.WAIT:
            participant.waiting.append((segment, captured_at, seq, committed))
            self.stats.segments_waiting += 1
        else:
            await self.publish(room, participant, segment, captured_at, plan.targets, seq, committed)
        await self.floor_events(room, list(plan.events))

    async def publish(
        self,
        room: Room,
        participant: Participant,
        segment: Segment,
        captured_at: float,
        targets: tuple[str, ...],
        seq: int,
        committed: str = "",
    ) -> None:
        """`committed`: the words the segment's interim captions committed; the final pass decodes after them."""
        profile = participant.profile
        message = segment.to_message(
            room.name, participant.id, seq, profile.speak, targets, profile.match_voice, committed
        )
        message = dataclasses.replace(message, service=self.overload.service(captured_at), node=self.options.node.id)
        for language in targets if message.service.speech else ():
            room.timeline(language).expect(participant.id, seq)
        if participant.video_window is not None:  # the speaker consented: their face can follow the translation
            spoken_from = captured_at - (segment.end_sample - segment.start_sample) / SAMPLE_RATE
            room.video.keep_original(participant.id, seq, participant.video_window.between(spoken_from, captured_at))
        message = self._with_frames(room, participant, message)
        message = message.stamped("captured", captured_at)
        if self._outbox:  # keep the order: earlier segments are still waiting for Redis
            self._hold(room, message)
            return
        try:
            await self.bus.publish(message.stamped("published"))
            self.stats.segments_published += 1
        except RedisError as exc:
            log.warning("redis unavailable (%s): holding segments until it is back", exc)
            self._hold(room, message)

    def _with_frames(self, room: Room, participant: Participant, message: SpeechSegment) -> SpeechSegment:
        """Send the segment's frames for lip-sync when its speaker consented, a listener wants it and the
        service level allows it; the segment then says so. Otherwise no frame leaves the gateway."""
        kept = room.video.get(participant.id, message.seq)
        if kept is None or not message.service.lipsync or not wants_lipsync(room, participant, message.targets):
            return message
        self.frames.send(room, participant.id, message.seq, kept.original)
        return dataclasses.replace(message, has_frames=True)

    async def floor_events(self, room: Room, events: list[turns.FloorEvent]) -> None:
        """Tell the room about floor changes; a speaker granted the floor gets their held segments sent."""
        if not events:
            return
        room.broadcast(room.floor_state())
        for event in events:
            speaker = room.participants.get(event.participant)
            if event.action == "granted" and speaker is not None and speaker.waiting:
                waiting, speaker.waiting = speaker.waiting, []
                for segment, captured_at, seq, committed in waiting:
                    targets = turns.plan_targets(room.floor, speaker.id)
                    await self.publish(room, speaker, segment, captured_at, targets, seq, committed)

    def _hold(self, room: Room, message: SpeechSegment) -> None:
        self._outbox.append((room, message, time.monotonic()))
        self.stats.segments_held += 1

    async def flush_outbox_forever(self) -> None:
        while True:
            await asyncio.sleep(REDIS_RETRY_S)
            await self.flush_outbox()

    async def flush_outbox(self) -> None:
        """Publish held segments in order; stop at the first failure, drop the ones held too long."""
        while self._outbox:
            room, message, held_at = self._outbox[0]
            if time.monotonic() - held_at > OUTBOX_MAX_AGE_S:
                self._outbox.popleft()
                self.stats.segments_dropped += 1
                log.error("dropped %s: redis was unavailable for over %.0f s", message.log_context, OUTBOX_MAX_AGE_S)
                for language in message.targets:
                    room.timeline(language).forget(message.speaker, message.seq)
                continue
            try:
                await self.bus.publish(message.stamped("published"))
            except RedisError:
                return
            self._outbox.popleft()
            self.stats.segments_published += 1


def without_start(segment: Segment, samples: int) -> Segment:
    """The segment less its first `samples` (an echo's tail before the speaker's own words)."""
    start = segment.start_sample + samples
    return dataclasses.replace(
        segment,
        samples=segment.samples[samples:],
        start_sample=start,
        speech_start_sample=max(segment.speech_start_sample, start),
    )
