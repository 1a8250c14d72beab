"""The gateway's core: the bridge between Janus (the media plane) and the translation pipeline.

Janus forwards every camera and microphone between the browsers without decoding them. The gateway
owns the rooms in Janus and plays two parts in each, kept apart in their own modules:
- ingest (gateway/bridge/ingest.py): a subscriber to each participant's audio, their segmenter, the floor,
  and SpeechSegments on the bus;
- egress (gateway/bridge/egress.py): results from the bus as captions on each participant's events socket,
  and translated speech on one feed per listening language that listeners subscribe to in Janus.

A participant joins over HTTP (validated name, languages and token), then opens two sockets with the
ticket they were given: the events socket (captions, roster, floor; mute and floor requests back) and
the media socket, which carries their janus.js session through the filtering proxy (gateway/web/proxy.py).
A participant whose media never connects, or whose sockets stay closed, is removed after a bound.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer

from gateway import validation
from gateway.bridge.egress import Egress
from gateway.bridge.frames import FramePath
from gateway.bridge.ingest import Ingest
from gateway.media.capture import VideoWindow
from gateway.media.janus import Handle, JanusClient, JanusClosed, JanusError
from gateway.media.playout import PlayoutOptions
from gateway.media.rtp import RtpAudioTrack, RtpReceiver
from gateway.media.videoroom import (
    PLUGIN,
    Feed,
    Monitor,
    Subscriber,
    create_room,
    destroy_room,
    forward_audio,
    kick,
    new_id,
)
from gateway.options import GatewayOptions
from gateway.rooms import captions
from gateway.rooms.overload import Decision, Level, OverloadMonitor, OverloadOptions
from gateway.rooms.results import ResultsReader
from gateway.rooms.room import Participant, Profile, Room
from gateway.rooms.tasks import TaskSupervisor
from pipeline import memory
from pipeline.bus import Bus, cancel_and_wait
from pipeline.interim import InterimTracker
from pipeline.messages import Message, VideoClip
from pipeline.metrics import Metrics
from pipeline.routes import STREAMS

log = logging.getLogger(__name__)

TICK_S = 0.1  # floor timeouts, playout give-ups and "still playing" notices run at this pace
EXPIRY_EVERY_S = 1.0
GIVE_BACK_EVERY_S = 10.0  # freed memory goes back to the system this often (pipeline/memory.py)
JANUS_RETRY_S = (0.5, 1.0, 2.0, 5.0)
MONITOR_DISPLAY = "babelroom-monitor"


class JoinError(Exception):
    """A join that must be refused; `status` and the message become the HTTP reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def close_reason(reason: str) -> bytes:
    """A WebSocket close frame's reason: at most 123 bytes of UTF-8, cut on a character boundary."""
    return reason.encode()[:123].decode(errors="ignore").encode()


class Gateway:
    def __init__(self, bus: Bus, options: GatewayOptions) -> None:
        self.bus = bus
        self.options = options
        self.playout = PlayoutOptions(options.playout_delay_s, options.late_bound_s, options.reorder_wait_s)
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, Participant] = {}
        self.metrics = Metrics()
        overload = OverloadOptions(late_bound_s=options.late_bound_s)
        self.overload = OverloadMonitor(bus, overload, self.metrics, self.announce_service)
        self.frames = FramePath(bus)
        self.ingest = Ingest(bus, options, self.overload, self.frames)
        self.egress = Egress(self.rooms)
        self.results = ResultsReader(bus, self.on_result, options.node.id)
        self.tasks = TaskSupervisor()  # the gateway's own, long-lived: restarted when they fail
        self.joined = 0
        self.janus: JanusClient | None = None
        self.janus_ready = asyncio.Event()
        self._control: Handle | None = None  # creates, destroys and kicks; never joins a room
        self._monitors: dict[str, Monitor] = {}
        self.rtp: RtpReceiver | None = None
        self._faces: dict[str, Subscriber] = {}  # participant id -> the subscriber to their camera
        self._listeners: dict[str, tuple[RtpAudioTrack, asyncio.Task[None]]] = {}  # participant id -> audio
        self._events_sockets: dict[str, Any] = {}
        self._rooms_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # per participant: their audio, their camera

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.rtp = await RtpReceiver.listen(self.options.rtp_bind, self.options.rtp_port)
        log.info("receiving participants' audio from Janus on udp %s:%d", self.options.rtp_bind, self.rtp.port)
        self.tasks.supervise("janus", self._janus_forever)
        self.tasks.supervise("results", self.results.run)
        self.tasks.supervise("outbox", self.ingest.flush_outbox_forever)
        self.tasks.supervise("tick", self._tick_forever)
        self.tasks.supervise("overload", self.overload.run)
        # Every stream, `results` and `dead` included, and the byte cap even while a stage's workers are down.
        self.tasks.supervise("retention", lambda: self.bus.trim_forever(STREAMS))
        self.tasks.supervise("memory", self._give_back_forever)

    async def stop(self) -> None:
        for participant_id in list(self.sessions):
            await self.leave(participant_id, "the gateway is stopping")
        await self.tasks.stop()
        await cancel_and_wait(list(self._tasks))
        if self.janus is not None:
            await self.janus.close()
        if self.rtp is not None:
            self.rtp.close()

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
        # iceServers=[] matters: aiortc otherwise adds Google's STUN server, which an offline
        # deployment cannot reach (and ICE gathering then waits for it).
        return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in self.options.ice_urls])

    # -- the connection to Janus ------------------------------------------------------------------
    async def _janus_forever(self) -> None:
        failures = 0
        while True:
            client = JanusClient(self.options.janus.url, self.options.janus.api_secret)
            try:
                await client.connect()
                self._control = await client.attach(PLUGIN)
            except (JanusClosed, JanusError, TimeoutError, OSError) as exc:
                delay = JANUS_RETRY_S[min(failures, len(JANUS_RETRY_S) - 1)]
                failures += 1
                log.warning("Janus unavailable at %s (%s); retrying in %.1f s", client.url, exc, delay)
                await client.close()
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.janus = client
            log.info("connected to Janus at %s", client.url)
            for room in list(self.rooms.values()):
                await self._open_in_janus(room)
            self.janus_ready.set()
            await client.closed.wait()
            self.janus_ready.clear()
            log.error("lost Janus; rooms are opened again when it is back, and pages rejoin by themselves")
            for room in list(self.rooms.values()):
                await self._close_in_janus(room)
            await client.close()

    async def _open_in_janus(self, room: Room) -> None:
        """Create the room in Janus (again, after a Janus restart), watch its publishers, publish feeds."""
        assert self.janus is not None and self._control is not None
        publishers = self.options.max_participants + len(self.options.languages)
        try:
            await create_room(
                self._control, self.options.janus.admin_key, room.keys, publishers, f"BabelRoom {room.name}"
            )
        except JanusError as exc:
            if exc.code != 427:  # 427: the room exists already (only our connection to Janus was lost)
                raise
        monitor = Monitor(lambda feed: self._on_feed(room, feed), lambda feed_id: self._on_gone(room, feed_id))
        self._monitors[room.name] = monitor
        await monitor.start(self.janus, room.keys, new_id())
        await self._update_feeds(room)

    async def _close_in_janus(self, room: Room) -> None:
        monitor = self._monitors.pop(room.name, None)
        if monitor is not None:
            await monitor.stop()
        for participant in room.participants.values():
            await self._stop_listening(participant)
        await self.egress.close_room(room)

    async def _update_feeds(self, room: Room) -> None:
        if self.janus is None or not self.janus.connected:
            return
        if await self.egress.update_feeds(self.janus, room, self.rtc_configuration()):
            self._announce_roster(room)

    # -- joining and leaving ----------------------------------------------------------------------
    async def join(self, room_name: str, profile: Profile) -> Participant:
        if not self.janus_ready.is_set():
            raise JoinError(503, "the media server is not available right now; try again in a moment")
        async with self._rooms_lock:
            room = self.rooms.get(room_name)
            if room is None:
                room = Room(room_name, self.playout, self.options.floor)
                try:
                    await self._open_in_janus(room)
                except (JanusError, JanusClosed, TimeoutError) as exc:
                    await self._close_in_janus(room)
                    raise JoinError(503, f"the media server could not open the room: {exc}") from exc
                self.rooms[room_name] = room
            if len(room.participants) >= self.options.max_participants:
                raise JoinError(409, f"room {room_name!r} is full ({self.options.max_participants} participants)")
            participant = Participant(secrets.token_hex(6), room_name, profile)
            participant.interim = InterimTracker(self.options.interim)
            room.add(participant)
            self.sessions[participant.id] = participant
        self.joined += 1
        log.info("%s joined room %s (speaks %s, hears %s)", profile.name, room_name, profile.speak, profile.hear)
        await self.ingest.warm_up(room, participant)
        await self._update_feeds(room)
        self._announce_roster(room)
        return participant

    async def leave(self, participant_id: str, reason: str = "left") -> bool:
        participant = self.sessions.pop(participant_id, None)
        if participant is None:
            return False
        await self._stop_listening(participant)
        socket = self._events_sockets.pop(participant.id, None)
        if socket is not None:  # the reason goes in the close frame: the page (or an operator) sees why
            await socket.close(message=close_reason(reason))
        room = self.rooms.get(participant.room)
        if room is not None:
            _, events = room.remove(participant_id)
            if self._control is not None and self.janus_ready.is_set():
                await kick(self._control, room.keys, participant.feed_id)
            await self.ingest.floor_events(room, events)
            if room.empty:
                await self._close_room(room)
            else:
                await self._update_feeds(room)
                self._announce_roster(room)
        log.info("%s left room %s (%s)", participant.profile.name, participant.room, reason)
        return True

    async def _close_room(self, room: Room) -> None:
        self.rooms.pop(room.name, None)
        await self._close_in_janus(room)
        if self._control is not None and self.janus_ready.is_set():
            await destroy_room(self._control, room.keys)

    def authenticate(self, participant_id: str, ticket: str) -> Participant:
        participant = self.sessions.get(participant_id)
        if participant is None or not hmac.compare_digest(participant.ticket.encode(), ticket.encode()):
            raise JoinError(401, "no such session, or a wrong ticket: join the room again")
        return participant

    def media_up(self, participant: Participant) -> None:
        participant.media_up = True

    async def attach_events(self, participant: Participant, socket: Any) -> None:
        """A participant's (new) events socket: it replaces any older one, and starts with the room's state."""
        old = self._events_sockets.get(participant.id)
        self._events_sockets[participant.id] = socket
        if old is not None:
            await old.close(message=close_reason("replaced by a newer connection"))
        room = self.rooms.get(participant.room)
        if room is not None:
            participant.send({"type": "welcome", "id": participant.id, "room": room.name})
            participant.send(self._roster(room))
            participant.send(room.floor_state())
            if self.overload.last.level > Level.FULL:  # a page (re)joining while degraded says so too
                participant.send(self.overload.last.notice())

    def detach_events(self, participant: Participant, socket: Any) -> None:
        if self._events_sockets.get(participant.id) is socket:
            self._events_sockets.pop(participant.id, None)

    # -- what Janus tells us ----------------------------------------------------------------------
    def _on_feed(self, room: Room, feed: Feed) -> None:
        language = room.pending_feeds.pop(feed.id, None)
        if language is not None:  # one of our language feeds is up: listeners may subscribe now
            room.feeds[language] = feed.id
            self._announce_roster(room)
            return
        participant = room.by_feed(feed.id)
        if participant is None:
            return  # someone already removed
        participant.feed, participant.media_lost_at = feed, None
        if participant.id not in self._listeners and feed.mids("audio"):
            self._spawn(self._listen(room, participant, feed))
        if participant.profile.face_consent and participant.id not in self._faces and feed.mids("video"):
            self._spawn(self._watch_face(room, participant, feed))
        self._announce_roster(room)

    def _on_gone(self, room: Room, feed_id: int) -> None:
        participant = room.by_feed(feed_id)
        if participant is None:
            return
        participant.feed, participant.media_lost_at = None, time.monotonic()
        self._spawn(self._stop_listening(participant))
        self._announce_roster(room)

    async def _listen(self, room: Room, participant: Participant, feed: Feed) -> None:
        """Have Janus forward the participant's audio to us (gateway/media/rtp.py), and segment it."""
        if self.rtp is None or self._control is None:
            return
        track = self.rtp.open_track()
        task = asyncio.current_task()
        assert task is not None
        self._listeners[participant.id] = (track, task)
        host = self.options.rtp_host or self.options.rtp_bind
        try:
            mid = feed.mids("audio")[0]
            await forward_audio(
                self._control, self.options.janus.admin_key, room.keys, feed.id, mid, host, self.rtp.port, track.ssrc
            )
            await self.ingest.listen(room, participant, track)
        except (JanusError, JanusClosed, TimeoutError, OSError) as exc:  # OSError: BABELROOM_RTP_HOST unresolved
            log.warning("could not forward %s's audio: %s", participant.profile.name, exc)
        finally:
            if self._listeners.get(participant.id, (None, None))[0] is track:
                self._listeners.pop(participant.id, None)
            self.rtp.close_track(track)

    async def _watch_face(self, room: Room, participant: Participant, feed: Feed) -> None:
        """Keep a consenting speaker's recent camera frames (an aiortc subscriber to their video), so a
        language's feed can show their face in step with the translation. Without consent, nothing."""
        if self.janus is None:
            return
        subscriber = Subscriber(self.rtc_configuration())
        self._faces[participant.id] = subscriber
        try:
            await subscriber.start(self.janus, room.keys, feed.id, feed.mids("video")[:1])
            window = participant.video_window = VideoWindow(self.options.video_window_frames)
            await window.fill(await subscriber.tracks.get())
        except (JanusError, JanusClosed, TimeoutError) as exc:
            log.warning("could not watch %s's camera: %s", participant.profile.name, exc)
        finally:
            participant.video_window = None
            if self._faces.get(participant.id) is subscriber:
                self._faces.pop(participant.id, None)
            await subscriber.stop()

    async def _stop_listening(self, participant: Participant) -> None:
        track, task = self._listeners.pop(participant.id, (None, None))
        if track is not None and self.rtp is not None:
            self.rtp.close_track(track)  # ends the listener's loop
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        face = self._faces.pop(participant.id, None)
        if face is not None:
            await face.stop()  # ends the window's loop

    # -- results, and the service level -----------------------------------------------------------
    def on_result(self, message: Message) -> None:
        """A worker's result: captions, speech and video to the room it belongs to (if it is ours)."""
        self.metrics.observe_result(message)
        if isinstance(message, VideoClip):
            self.frames.receive(self.rooms, message)
        else:
            captions.dispatch(self.rooms, message)

    def video_counts(self) -> dict[str, int]:
        """The lip-sync path's counters: what the feeds showed, frames out, clips back."""
        return {**vars(self.egress.video_stats), **vars(self.frames.stats)}

    def announce_service(self, decision: Decision) -> None:
        """The overload policy changed the service level: every room's page says so."""
        for room in self.rooms.values():
            room.broadcast(decision.notice())

    # -- room state for the pages -----------------------------------------------------------------
    def _roster(self, room: Room) -> dict[str, Any]:
        return {"type": "roster", "participants": room.roster(), "feeds": dict(room.feeds)}

    def _announce_roster(self, room: Room) -> None:
        room.broadcast(self._roster(room))
        room.broadcast(room.floor_state())

    # -- what the page asks over its events socket ------------------------------------------------
    async def on_client_message(self, participant: Participant, text: str) -> None:
        try:
            message = validation.json_object(text.encode())  # strict: depth-bounded, an object
            kind = message.get("type")
            room = self.rooms.get(participant.room)
            if kind == "mute":
                participant.muted = bool(message.get("muted"))
            elif kind == "camera":
                participant.camera = bool(message.get("on"))
            elif kind == "floor":
                await self.floor_request(participant, str(message.get("action")))
                return
            elif kind == "leave":
                await self.leave(participant.id)
                return
            else:
                raise ValueError(f"unknown message type {kind!r}")
            if room is not None:
                self._announce_roster(room)
        except Exception as exc:  # one client's bad message must not disturb the room
            log.warning("bad message from %s: %s", participant.id, exc)
            participant.send({"type": "error", "error": f"could not handle message: {exc}"})

    async def floor_request(self, participant: Participant, action: str) -> None:
        """The page's floor button: ask for the floor (granted, or queued behind the holder) or give it up."""
        room = self.rooms.get(participant.room)
        if room is None:
            return
        if action == "request":
            await self.ingest.floor_events(room, room.floor.request(participant.id))
        elif action == "release":
            await self.ingest.floor_events(room, room.floor.release(participant.id))
        else:
            raise ValueError(f"unknown floor action {action!r}: use request or release")

    # -- timers -----------------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        last_expiry = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            for room in list(self.rooms.values()):
                try:
                    await self.ingest.floor_events(room, room.floor.tick())
                    self.egress.tick(room, time.time())
                except Exception:
                    log.exception("tick failed for room %s", room.name)
            if time.monotonic() - last_expiry >= EXPIRY_EVERY_S:
                last_expiry = time.monotonic()
                await self.expire_sessions(last_expiry)

    @staticmethod
    async def _give_back_forever() -> None:
        while True:
            await asyncio.sleep(GIVE_BACK_EVERY_S)
            await asyncio.to_thread(memory.give_back)

    async def expire_sessions(self, now: float) -> None:
        """Remove participants whose media never connected or stopped (their feed gone from Janus, sockets
        open or not) for longer than the media timeout, or who have been gone past the grace."""
        timeout = self.options.media_timeout_s
        for participant in list(self.sessions.values()):
            if not participant.media_up and now - participant.joined_at > timeout:
                await self.leave(participant.id, f"media never connected within {timeout:.0f} s")
            elif participant.media_lost_at is not None and now - participant.media_lost_at > timeout:
                await self.leave(participant.id, f"media stopped for more than {timeout:.0f} s")
            elif (
                participant.disconnected_at is not None
                and now - participant.disconnected_at > self.options.disconnect_grace_s
            ):
                await self.leave(participant.id, "disconnected")
