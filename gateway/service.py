"""The gateway's core: rooms, joining and leaving, each participant's media, and the results tail.

One segment's path through here: a participant's inbound audio track -> mono 48 kHz -> their
Segmenter (16 kHz, closed at a natural pause) -> the room's floor control (translate, captions only,
or wait for the floor) -> a SpeechSegment on the bus with targets = the listeners' distinct languages.
The workers' results come back through `ResultsReader` -> `on_result` -> captions.dispatch -> data channels and the
per-language playout timelines that every listener's translated track reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from redis.exceptions import RedisError

from gateway import captions
from gateway.media import VideoWindow, mono_samples
from gateway.options import GatewayOptions
from gateway.overload import Decision, OverloadMonitor, OverloadOptions
from gateway.playout import OUTPUT_RATE, PlayoutOptions, TimelineTrack
from gateway.results import ResultsReader
from gateway.rooms import Participant, Profile, Room
from gateway.tasks import TaskSupervisor
from pipeline import turns
from pipeline.audio import resample
from pipeline.bus import Bus
from pipeline.messages import SAMPLE_RATE, Message, SpeechSegment
from pipeline.metrics import Metrics
from pipeline.segmenter import Segment, Segmenter

log = logging.getLogger(__name__)

TICK_S = 0.1  # floor timeouts, playout give-ups and "still playing" notices run at this pace
REDIS_RETRY_S = 1.0
# Segments that could not be published (Redis away) are held and retried in order; one older than
# this is dropped and counted: by then its moment in the conversation has passed.
OUTBOX_MAX_AGE_S = 30.0


class JoinError(Exception):
    """A join that must be refused; `status` and the message become the HTTP reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GatewayStats:
    joined: int = 0
    segments_published: int = 0
    segments_waiting: int = 0
    segments_held: int = 0  # held while Redis was unavailable, published later
    segments_dropped: int = 0  # held too long and given up
    results: int = 0


class Gateway:
    def __init__(self, bus: Bus, options: GatewayOptions) -> None:
        self.bus = bus
        self.options = options
        self.playout = PlayoutOptions(options.playout_delay_s, options.late_bound_s, options.reorder_wait_s)
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, Participant] = {}
        self.stats = GatewayStats()
        self._tasks: set[asyncio.Task[Any]] = set()  # per participant: their audio, their camera
        self.tasks = TaskSupervisor()  # the gateway's own, long-lived: restarted when they fail
        self.results = ResultsReader(bus, self.on_result)
        self.metrics = Metrics()
        overload = OverloadOptions(late_bound_s=options.late_bound_s)
        self.overload = OverloadMonitor(bus, overload, self.metrics, self.announce_service)
        self._playing: dict[tuple[str, str], tuple[str, int] | None] = {}
        self._outbox: deque[tuple[Room, SpeechSegment, float]] = deque()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.tasks.supervise("results", self.results.run)
        self.tasks.supervise("tick", self._tick_forever)
        self.tasks.supervise("outbox", self._flush_outbox_forever)
        self.tasks.supervise("overload", self.overload.run)

    async def stop(self) -> None:
        for participant_id in list(self.sessions):
            await self.leave(participant_id)
        await self.tasks.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    def rtc_configuration(self) -> RTCConfiguration:
        # iceServers=[] matters: aiortc otherwise adds Google's STUN server, which a loopback or
        # offline deployment cannot reach (and ICE gathering then waits for it).
        o = self.options
        servers = [
            RTCIceServer(urls=url, username=o.ice_username or None, credential=o.ice_credential or None)
            for url in o.ice_urls
        ]
        return RTCConfiguration(iceServers=servers)

    # -- joining and leaving ----------------------------------------------------------------------
    async def join(self, room_name: str, profile: Profile, offer_sdp: str) -> tuple[Participant, str]:
        room = self.rooms.get(room_name) or Room(room_name, self.playout, self.options.floor)
        if len(room.participants) >= self.options.max_participants:
            raise JoinError(409, f"room {room_name!r} is full ({self.options.max_participants} participants)")
        pc = RTCPeerConnection(self.rtc_configuration())
        participant = Participant(secrets.token_hex(6), room_name, profile, pc)
        self._wire_peer(room, participant)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self._attach_outgoing_audio(room, participant)
            await pc.setLocalDescription(await pc.createAnswer())
        except JoinError:
            await pc.close()
            raise
        except Exception as exc:  # aiortc raises ValueError, KeyError, ... on SDP it cannot use
            await pc.close()
            raise JoinError(400, f"malformed or unusable SDP offer: {exc or type(exc).__name__}") from exc
        self.rooms[room_name] = room
        room.add(participant)
        self.sessions[participant.id] = participant
        self.stats.joined += 1
        log.info("%s joined room %s (speaks %s, hears %s)", profile.name, room_name, profile.speak, profile.hear)
        participant.send({"type": "welcome", "id": participant.id, "room": room_name})
        self._announce_roster(room)
        return participant, pc.localDescription.sdp

    async def leave(self, participant_id: str) -> bool:
        participant = self.sessions.pop(participant_id, None)
        if participant is None:
            return False
        room = self.rooms.get(participant.room)
        if room is not None:
            _, events = room.remove(participant_id)
            for other in room.participants.values():
                other.originals.drop(participant_id)
            await self._floor_events(room, events)
            self._announce_roster(room)
            if room.empty:
                self.rooms.pop(room.name, None)
        participant.originals.stop()
        await participant.pc.close()
        log.info("%s left room %s", participant.profile.name, participant.room)
        return True

    def _wire_peer(self, room: Room, participant: Participant) -> None:
        pc = participant.pc

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            participant.channel = channel
            channel.on("message", lambda text: self._spawn(self.on_client_message(participant, text)))
            participant.flush_outbox()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self.consume_audio(room, participant, track))
            else:
                self._receive_camera(room, participant, track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.leave(participant.id)

    def _attach_outgoing_audio(self, room: Room, participant: Participant) -> None:
        """First audio section: mic up, translation down. Second (if offered): the others' own voices."""
        audio = [t for t in participant.pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise JoinError(400, "the SDP offer has no audio section: a microphone track is required")
        audio[0].sender.replaceTrack(TimelineTrack(room.timeline(participant.profile.hear)))
        audio[0].direction = "sendrecv"
        if len(audio) > 1:
            audio[1].sender.replaceTrack(participant.originals)
            audio[1].direction = "sendonly"

    def _receive_camera(self, room: Room, participant: Participant, track: MediaStreamTrack) -> None:
        participant.camera = track
        if participant.profile.consent:  # frames are kept for lip-sync only with consent
            participant.video_window = VideoWindow(self.options.video_window_frames)
            self._spawn(participant.video_window.fill(room.relay.subscribe(track, buffered=False)))

    def _announce_roster(self, room: Room) -> None:
        roster = [{**p.public(), "video": p.camera is not None} for p in room.participants.values()]
        room.broadcast({"type": "roster", "participants": roster})
        room.broadcast(room.floor_state())

    # -- signaling over the data channel ----------------------------------------------------------
    async def on_client_message(self, participant: Participant, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message.get("type")
            if kind == "offer":
                await self.renegotiate(participant, str(message["sdp"]), dict(message.get("slots", {})))
            elif kind == "mute":
                participant.muted = bool(message.get("muted"))
                room = self.rooms.get(participant.room)
                if room is not None:
                    self._announce_roster(room)
            elif kind == "floor":
                await self.floor_request(participant, str(message.get("action")))
            elif kind == "leave":
                await self.leave(participant.id)
        except Exception as exc:  # one client's bad message must not disturb the room
            log.warning("bad message from %s: %s", participant.id, exc)
            participant.send({"type": "error", "error": f"could not handle message: {exc}"})

    async def floor_request(self, participant: Participant, action: str) -> None:
        """The page's floor button: ask for the floor (granted, or queued behind the holder) or give it up."""
        room = self.rooms.get(participant.room)
        if room is None:
            return
        if action == "request":
            await self._floor_events(room, room.floor.request(participant.id))
        elif action == "release":
            await self._floor_events(room, room.floor.release(participant.id))
        else:
            raise ValueError(f"unknown floor action {action!r}: use request or release")

    async def renegotiate(self, participant: Participant, sdp: str, slots: dict[str, str]) -> None:
        """The client re-offers with a receive-only video section per other participant (`slots`: mid ->
        participant id, or "" for a free slot); each is answered with that participant's relayed camera."""
        room = self.rooms.get(participant.room)
        pc = participant.pc
        if room is None:
            return
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video" or transceiver.mid not in slots:
                continue
            source = room.participants.get(slots[transceiver.mid])
            current = participant.video_slots.get(transceiver.mid or "")
            if source is None or source.camera is None:
                transceiver.sender.replaceTrack(None)
                participant.video_slots.pop(transceiver.mid or "", None)
            elif current is None or current.id != source.id:
                transceiver.sender.replaceTrack(room.relay.subscribe(source.camera, buffered=False))
                participant.video_slots[transceiver.mid or ""] = source
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        participant.send({"type": "answer", "sdp": pc.localDescription.sdp})

    # -- inbound audio: segment, floor, publish ---------------------------------------------------
    async def consume_audio(self, room: Room, participant: Participant, track: MediaStreamTrack) -> None:
        segmenter = Segmenter(self.options.segmenter, input_rate=OUTPUT_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            try:
                samples = mono_samples(frame)
            except ValueError as exc:  # one bad frame is skipped; the participant's audio carries on
                log.warning("skipped an audio frame from %s: %s", participant.profile.name, exc)
                continue
            if frame.sample_rate != OUTPUT_RATE:
                samples = resample(samples, frame.sample_rate, OUTPUT_RATE)
            if participant.muted:
                samples = samples * 0.0
            self._share_original(room, participant, samples)
            segments = segmenter.feed(samples)
            if participant.id not in room.participants:
                continue  # still joining, or gone
            now = time.time()
            if segmenter.speaking:
                await self._floor_events(room, room.floor.heard(participant.id))
            for segment in segments:
                captured_at = now - (segmenter.position_sample - segment.end_sample) / SAMPLE_RATE
                await self.submit_segment(room, participant, segment, captured_at)

    def _share_original(self, room: Room, speaker: Participant, samples: Any) -> None:
        """The speaker's own voice: full level to listeners of their language, quietly to those who asked."""
        for listener in room.participants.values():
            if listener.id == speaker.id:
                continue
            if listener.profile.hear == speaker.profile.speak:
                listener.originals.push(speaker.id, samples, 1.0)
            elif listener.profile.hear_original:
                listener.originals.push(speaker.id, samples, self.options.original_under_gain)

    async def submit_segment(self, room: Room, participant: Participant, segment: Segment, captured_at: float) -> None:
        if not participant.profile.consent:
            return  # no consent to voice processing: the others hear the original voice only
        plan = room.floor.submit(participant.id)
        if plan.disposition is turns.Disposition.WAIT:
            participant.waiting.append((segment, captured_at))
            self.stats.segments_waiting += 1
        else:
            await self.publish(room, participant, segment, captured_at, plan.targets)
        await self._floor_events(room, list(plan.events))

    async def publish(
        self, room: Room, participant: Participant, segment: Segment, captured_at: float, targets: tuple[str, ...]
    ) -> None:
        seq = room.next_seq(participant.id)
        profile = participant.profile
        message = segment.to_message(room.name, participant.id, seq, profile.speak, targets, profile.match_voice)
        message = dataclasses.replace(message, service=self.overload.service(captured_at))
        for language in targets if message.service.speech else ():
            room.timeline(language).expect(participant.id, seq)
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

    def _hold(self, room: Room, message: SpeechSegment) -> None:
        self._outbox.append((room, message, time.monotonic()))
        self.stats.segments_held += 1

    async def _flush_outbox_forever(self) -> None:
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

    async def _floor_events(self, room: Room, events: list[turns.FloorEvent]) -> None:
        if not events:
            return
        room.broadcast(room.floor_state())
        for event in events:
            speaker = room.participants.get(event.participant)
            if event.action == "granted" and speaker is not None and speaker.waiting:
                waiting, speaker.waiting = speaker.waiting, []
                for segment, captured_at in waiting:
                    await self.publish(room, speaker, segment, captured_at, turns.plan_targets(room.floor, speaker.id))

    # -- results and timers -----------------------------------------------------------------------
    def on_result(self, message: Message) -> None:
        """A worker's result: captions and speech to the room it belongs to (if it is ours)."""
        self.stats.results += 1
        self.metrics.observe_result(message)
        captions.dispatch(self.rooms, message)

    def announce_service(self, decision: Decision) -> None:
        """The overload policy changed the service level: every room's page says so."""
        for room in self.rooms.values():
            room.broadcast(decision.notice())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for room in list(self.rooms.values()):
                try:
                    await self._tick(room, time.time())
                except Exception:
                    log.exception("tick failed for room %s", room.name)

    async def _tick(self, room: Room, now: float) -> None:
        await self._floor_events(room, room.floor.tick())
        for language, timeline in room.timelines.items():
            timeline.poll(now)
            timeline.prune(now)
            placement = timeline.playing(now)
            current = (placement.clip.speaker, placement.clip.seq) if placement else None
            if self._playing.get((room.name, language)) != current:
                self._playing[(room.name, language)] = current
                notice = {
                    "type": "playout",
                    "lang": language,
                    "playing": current is not None,
                    "id": f"{current[0]}:{current[1]}" if current else "",
                    "speaker": room.names.get(current[0], "") if current else "",
                    "stats": vars(timeline.stats),
                }
                for listener in room.listeners_for(language):
                    listener.send(notice)
