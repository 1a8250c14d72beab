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
A participant whose media never connects, or whose sockets stay closed, is removed after a bound; so is one
whose join token expires, or whom a host removes. Whatever ends a participation ends its access: the events
socket closes with a code the page acts on, the media sockets close and their Janus sessions are destroyed
(the proxy waits on `Participant.access`), and the feed is kicked from the Janus room.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer
from redis.exceptions import RedisError

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
from gateway.rooms import captions, commands
from gateway.rooms.commands import BadCommand, Command
from gateway.rooms.overload import Decision, Level, OverloadMonitor, OverloadOptions
from gateway.rooms.removals import Removals
from gateway.rooms.results import ResultsReader
from gateway.rooms.room import (
    CLOSE_ENDED,
    CLOSE_EXPIRED,
    CLOSE_REJOIN,
    CLOSE_REMOVED,
    EXIT_REASONS,
    Admission,
    Participant,
    Profile,
    Room,
    close_reason,
)
from gateway.rooms.tasks import TaskSupervisor
from gateway.rooms.transcript import TranscriptRefused, Transcripts
from pipeline import memory
from pipeline.bus import Bus, cancel_and_wait
from pipeline.interim import InterimTracker
from pipeline.looplag import LoopLag
from pipeline.messages import Message, VideoClip
from pipeline.metrics import Metrics
from pipeline.routes import STREAMS

log = logging.getLogger(__name__)

TICK_S = 0.1  # floor timeouts, playout give-ups and "still playing" notices run at this pace
EXPIRY_EVERY_S = 1.0
GIVE_BACK_EVERY_S = 10.0  # freed memory goes back to the system this often (pipeline/memory.py)
JANUS_RETRY_S = (0.5, 1.0, 2.0, 5.0)
MONITOR_DISPLAY = "babelroom-monitor"
EXIT_NOTICE_S = 0.25  # the most a page that does not read may delay the end of its own access, saying why
GOODBYE_S = 1.0  # on stopping, how long close frames are given to go out


class JoinError(Exception):
    """A join that must be refused; `status` and the message become the HTTP reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self.transcripts = Transcripts(bus, options.transcript, self.rooms, options.tokens_required)
        self.removals = Removals(bus)
        self.tasks = TaskSupervisor()  # the gateway's own, long-lived: restarted when they fail
        self.loop_lag = LoopLag(self.metrics.observe_loop_lag)
        self.metrics.watch_recent_loop_lag(self.loop_lag.recent_worst_s)
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
        self._goodbyes: set[asyncio.Task[Any]] = set()  # events sockets closing

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
        self.tasks.supervise("transcripts", self.transcripts.record_forever)
        self.tasks.supervise("transcript-leases", self.transcripts.keep_open_forever)
        self.tasks.supervise("loop-lag", self.loop_lag.run)

    async def stop(self) -> None:
        for participant_id in list(self.sessions):
            await self.leave(participant_id, "the gateway is stopping")
        if self._goodbyes:
            await asyncio.wait(self._goodbyes, timeout=GOODBYE_S)
        await self.tasks.stop()
        await cancel_and_wait(list(self._tasks))
        if self.janus is not None:
            await self.janus.close()
        if self.rtp is not None:
            self.rtp.close()

    def _spawn(self, coro: Any, group: set[asyncio.Task[Any]] | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        if group is not None:
            group.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._goodbyes.discard(task)
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
    async def join(self, room_name: str, profile: Profile, admission: Admission | None = None) -> Participant:
        admission = admission or Admission()
        if not self.janus_ready.is_set():
            raise JoinError(503, "the media server is not available right now; try again in a moment")
        await self._check_not_barred(room_name, admission)
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
            if room.ending:
                raise JoinError(409, f"the host is ending the meeting in room {room_name!r}; join again in a moment")
            if len(room.participants) >= self.options.max_participants:
                raise JoinError(409, f"room {room_name!r} is full ({self.options.max_participants} participants)")
            participant = Participant(secrets.token_hex(6), room_name, profile, admission)
            participant.interim = InterimTracker(self.options.interim)
            room.add(participant)
            self.sessions[participant.id] = participant
        self.joined += 1
        log.info("%s joined room %s (speaks %s, hears %s)", profile.name, room_name, profile.speak, profile.hear)
        await self.ingest.warm_up(room, participant)
        await self.transcripts.opened(room_name)
        await self._update_feeds(room)
        self._announce_roster(room)
        return participant

    async def _check_not_barred(self, room_name: str, admission: Admission) -> None:
        try:
            barred = await self.removals.barred(room_name, admission)
        except (RedisError, OSError) as exc:
            raise JoinError(503, f"cannot check the join token right now ({exc}); try again in a moment") from exc
        if barred:
            raise JoinError(403, "the host removed you from this meeting; ask them for a new link to join again")

    async def leave(self, participant_id: str, reason: str = "left", code: int = CLOSE_REJOIN) -> bool:
        """End a participation, and with it every access: the page is told why (`code` says whether it may
        join again by itself), its media sockets close and their Janus sessions go, its feed is kicked. It runs
        to the end even when its caller is cancelled (aiohttp cancels a handler whose client went away)."""
        return bool(await asyncio.shield(self._spawn(self._leave(participant_id, reason, code))))

    async def _leave(self, participant_id: str, reason: str, code: int) -> bool:
        participant = self.sessions.pop(participant_id, None)
        if participant is None:
            return False
        socket = self._events_sockets.pop(participant.id, None)
        if socket is not None and code != CLOSE_REJOIN:
            await self._notify_exit(socket, reason, code)
        if socket is not None:  # the reason goes in the close frame: the page (or an operator) sees why
            self._spawn(self._close_events(socket, reason, code), self._goodbyes)
        # after the events socket's close is on its way: a page that saw its media socket close first rejoined
        # without the reason when the close frame came more than its second of waiting later (a loaded machine)
        participant.access.end(reason, code)
        await self._stop_listening(participant)
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

    @staticmethod
    async def _notify_exit(socket: Any, reason: str, code: int) -> None:
        """Say it on the events socket before any socket closes: the page then knows not to join again."""
        notice = json.dumps({"type": "exit", "reason": EXIT_REASONS[code], "message": reason}, ensure_ascii=False)
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            await asyncio.wait_for(socket.send_str(notice), EXIT_NOTICE_S)

    @staticmethod
    async def _close_events(socket: Any, reason: str, code: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # a socket that goes first is closed as well
            await socket.close(code=code, message=close_reason(reason))

    async def remove(self, host: Participant, participant_id: str) -> None:
        """A host removes someone from their meeting: their token is barred from the room first (so that no
        rejoin slips in), then their participation ends."""
        target = self.sessions.get(participant_id)
        if target is None or target.room != host.room:
            raise BadCommand("no such participant in this meeting", "participant", 404)
        if target is host:
            raise BadCommand("to leave the meeting yourself, use leave", "participant")
        try:
            barred = await self.removals.bar(target.room, target.admission)
        except (RedisError, OSError) as exc:
            log.warning("could not bar %s's token from room %s: %s", target.id, target.room, exc)
            barred = False
        await self.leave(target.id, f"{host.profile.name} removed you from the meeting", CLOSE_REMOVED)
        log.info("%s removed %s from room %s", host.profile.name, target.profile.name, host.room)
        if not barred and target.admission.token_digest:
            raise BadCommand("removed, but their link could not be barred: it may admit them again", status=503)

    async def end_meeting(self, host: Participant) -> None:
        """A host ends the meeting for everyone: all leave, and the room goes from Janus with the last."""
        room = self.rooms.get(host.room)
        if room is None or room.ending:
            return
        room.ending = True
        try:
            for participant_id in list(room.participants):
                await self.leave(participant_id, f"{host.profile.name} ended the meeting", CLOSE_ENDED)
        finally:
            room.ending = False
        log.info("%s ended the meeting in room %s", host.profile.name, room.name)

    async def _close_room(self, room: Room) -> None:
        self.rooms.pop(room.name, None)
        await self.transcripts.ended(room.name)
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

    def published(self, participant: Participant, streams: list[Any]) -> None:
        """Janus accepted the participant's publish: forward their audio now, before their peer connection is up,
        so that their first packet to reach Janus reaches us too. (The monitor hears of the feed only once the
        connection is up, and a forward set up then missed what they said meanwhile.)"""
        room = self.rooms.get(participant.room)
        if room is not None and participant.id in room.participants:
            feed = Feed.from_janus({"id": participant.feed_id, "display": participant.profile.name, "streams": streams})
            self._start_listening(room, participant, feed)

    async def attach_events(self, participant: Participant, socket: Any) -> None:
        """A participant's (new) events socket: it replaces any older one, and starts with the room's state."""
        old = self._events_sockets.get(participant.id)
        self._events_sockets[participant.id] = socket
        if old is not None:
            await old.close(message=close_reason("replaced by a newer connection"))
        room = self.rooms.get(participant.room)
        if room is not None:
            welcome = {"type": "welcome", "id": participant.id, "room": room.name, "role": participant.profile.role}
            participant.send(welcome)
            participant.send(self._roster(room))
            participant.send(room.floor_state())
            participant.send(participant.live_state())
            if self.overload.last.level > Level.FULL:  # a page (re)joining while degraded says so too
                participant.send(self.overload.last.notice())
            await self.transcripts.greet(participant)

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
        self._start_listening(room, participant, feed)
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

    def _start_listening(self, room: Room, participant: Participant, feed: Feed) -> None:
        """Forward and segment the participant's audio, once: the proxy (their publish accepted) and the monitor
        (their feed up) may both ask."""
        if participant.id in self._listeners or not feed.mids("audio") or self.rtp is None:
            return
        track = self.rtp.open_track()
        self._listeners[participant.id] = (track, self._spawn(self._listen(room, participant, feed, track)))

    async def _listen(self, room: Room, participant: Participant, feed: Feed, track: RtpAudioTrack) -> None:
        """Have Janus forward the participant's audio to us (gateway/media/rtp.py), and segment it."""
        assert self.rtp is not None
        host = self.options.rtp_host or self.options.rtp_bind
        try:
            if self._control is None:
                return
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
            self.transcripts.offer(message)

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
        """One frame of the page's events socket: checked field by field (gateway/rooms/commands.py), then obeyed
        to the end, even if the socket closes meanwhile (a host ending the meeting closes their own first). A
        refusal goes back as an error event naming the field; nothing a client sends is an unexpected error."""
        await asyncio.shield(self._spawn(self._on_client_message(participant, text)))

    async def _on_client_message(self, participant: Participant, text: str) -> None:
        try:
            await self._obey(participant, commands.parse(text))
        except BadCommand as exc:
            log.warning("refused a message from %s: %s", participant.id, exc)
            participant.send(exc.event())
        except Exception:  # a bug of ours: logged as one, and still the room goes on
            log.exception("unexpected error handling a message from %s", participant.id)
            participant.send({"type": "error", "status": 500, "field": None, "error": "internal error (logged)"})

    async def _obey(self, participant: Participant, command: Command) -> None:
        kind, fields = command.kind, command.fields
        if kind in commands.HOST_COMMANDS and participant.profile.role != "host":
            raise BadCommand(f"only the meeting's host may ask {kind!r}", status=403)
        if participant.id not in self.sessions:
            return  # gone already: a frame that was on its way
        if kind == "mute":
            participant.muted = fields["muted"]
        elif kind == "camera":
            participant.camera = fields["on"]
        elif kind == "floor":
            await self.floor_request(participant, fields["action"])
        elif kind == "leave":
            await self.leave(participant.id)
        elif kind == "remove":
            await self.remove(participant, fields["participant"])
        elif kind == "end":
            await self.end_meeting(participant)
        elif kind == "transcript":  # turn the meeting's transcript on or off (gateway/rooms/transcript.py)
            try:
                await self.transcripts.turn(participant, fields["on"])
            except TranscriptRefused as exc:
                raise BadCommand(str(exc), status=403) from exc
        room = self.rooms.get(participant.room)
        if kind in ("mute", "camera") and room is not None:
            self._announce_roster(room)

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
        """Remove participants whose join token expired (so a session outlives its token by less than
        EXPIRY_EVERY_S), whose media never connected or stopped (their feed gone from Janus, sockets open or not)
        for longer than the media timeout, or who have been gone past the grace."""
        timeout = self.options.media_timeout_s
        for participant in list(self.sessions.values()):
            if time.time() >= participant.admission.expires_at:
                await self.leave(participant.id, "your join token expired; ask the host for a new link", CLOSE_EXPIRED)
            elif not participant.media_up and now - participant.joined_at > timeout:
                await self.leave(participant.id, f"media never connected within {timeout:.0f} s")
            elif participant.media_lost_at is not None and now - participant.media_lost_at > timeout:
                await self.leave(participant.id, f"media stopped for more than {timeout:.0f} s")
            elif (
                participant.disconnected_at is not None
                and now - participant.disconnected_at > self.options.disconnect_grace_s
            ):
                await self.leave(participant.id, "disconnected")
