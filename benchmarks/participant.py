"""A meeting participant played by aiortc instead of a browser, for tests and benchmarks.

It joins the way the room page does: POST /join, then the events socket (captions, roster, floor), then
a Janus session through the gateway's filtering proxy, where it publishes its microphone as its own
feed and subscribes to the translated feed of the language it hears. It never learns the room's pin
or Janus's secrets: the proxy adds them, as it does for a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.media.janus import JanusClient
from gateway.media.videoroom import Publisher, RoomKeys, Subscriber

RTC = RTCConfiguration(iceServers=[])
MAX_NODE_HOPS = 3


@dataclass
class ScriptedParticipant:
    base_url: str
    room: str
    name: str
    speak: str
    hear: str
    token: str = ""  # the join token it joined with
    session: dict[str, Any] = field(default_factory=dict)  # the join reply: id, ticket, room_id, feed_id, ...
    messages: list[dict[str, Any]] = field(default_factory=list)
    message_times: list[float] = field(default_factory=list)
    translated_peak: float = 0.0  # loudest 20 ms of the translated feed, RMS in [0, 1]
    translated_sound_at: list[float] = field(default_factory=list)  # wall times of 20 ms frames above 0.02 RMS
    translated_frames: list[tuple[float, Any]] = field(default_factory=list)  # (wall time, RGB) of the feed's video
    heard_at: list[float] = field(default_factory=list)  # wall times of audio frames received through `listen_to`
    events_closed: tuple[float, int, str] | None = None  # (wall time, close code, reason) once the gateway closes it
    media_closed_at: float | None = None  # wall time the media socket (Janus through the proxy) closed
    _http: aiohttp.ClientSession | None = None
    _events: aiohttp.ClientWebSocketResponse | None = None
    _janus: JanusClient | None = None
    _peers: list[Publisher | Subscriber] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(
        self,
        mic: MediaStreamTrack,
        token: str = "",
        options: dict[str, bool] | None = None,
        camera: MediaStreamTrack | None = None,
    ) -> None:
        self.token = token
        body = {"name": self.name, "speak": self.speak, "hear": self.hear, "token": token, "options": options or {}}
        for _ in range(MAX_NODE_HOPS + 1):  # a room that lives on another media node: join there, as a page does
            self._http = aiohttp.ClientSession(base_url=self.base_url)
            async with self._http.post(f"/api/rooms/{self.room}/join", json=body) as response:
                self.session = await response.json()
            if response.status != 421:
                break
            await self._http.close()
            self.base_url = self.session["url"]
        if response.status != 200:
            raise AssertionError(f"join refused: {response.status} {self.session}")
        assert self._http is not None
        self._events = await self._http.ws_connect(self._path("events"))
        self._tasks.append(asyncio.create_task(self._read_events()))
        self._janus = JanusClient(self._ws_url("janus"), api_secret="")
        await self._janus.connect()
        self._tasks.append(asyncio.create_task(self._watch_media_socket(self._janus)))
        publisher = Publisher(RTC)
        self._peers.append(publisher)
        keys = RoomKeys(self.session["room_id"], pin="", secret="")
        tracks = [mic] if camera is None else [mic, camera]
        await publisher.start(self._janus, keys, self.session["feed_id"], self.name, tracks)

    async def listen_to_translation(self, timeout_s: float = 15.0) -> None:
        """Subscribe to the feed of translated speech in the language this participant hears."""
        assert self._janus is not None
        feed = await self.wait_for(lambda: self.feeds().get(self.hear), "a translated feed", timeout_s)
        subscriber = Subscriber(RTC)
        self._peers.append(subscriber)
        await subscriber.start(self._janus, RoomKeys(self.session["room_id"], pin="", secret=""), int(feed))
        for _ in range(2):  # the feed's audio, and its video (a face while a translation plays)
            track = await asyncio.wait_for(subscriber.tracks.get(), timeout_s)
            watch = self._meter if track.kind == "audio" else self._watch
            self._tasks.append(asyncio.create_task(watch(track)))

    async def listen_to(self, feed: int, mids: list[str], timeout_s: float = 15.0) -> None:
        """Subscribe through the proxy to streams of another participant's feed, as a page does; the arrival
        time of each of their audio frames goes to `heard_at`."""
        assert self._janus is not None
        subscriber = Subscriber(RTC)
        self._peers.append(subscriber)
        await subscriber.start(self._janus, RoomKeys(self.session["room_id"], pin="", secret=""), feed, mids)
        track = await asyncio.wait_for(subscriber.tracks.get(), timeout_s)
        self._tasks.append(asyncio.create_task(self._count(track)))

    def send(self, message: dict[str, Any]) -> None:
        assert self._events is not None
        self._tasks.append(asyncio.create_task(self._events.send_str(json.dumps(message))))

    def captions(self, **match: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "caption" and all(m.get(k) == v for k, v in match.items())]

    def latest(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in reversed(self.messages) if m["type"] == kind), None)

    def feeds(self) -> dict[str, int]:
        roster = self.latest("roster")
        return dict(roster["feeds"]) if roster else {}

    async def wait_for(self, condition: Any, what: str, timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {what}")
            await asyncio.sleep(0.05)
        return value

    async def unpublish(self) -> None:
        """Stop publishing (the feed leaves Janus), keeping every subscription and socket open."""
        publisher = next(peer for peer in self._peers if isinstance(peer, Publisher))
        assert publisher.handle is not None
        await publisher.handle.message({"request": "unpublish"})

    async def stop_media(self) -> None:
        """Hang up every peer connection (their Janus handles detach), keeping the sockets open."""
        for peer in self._peers:
            await peer.stop()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for peer in self._peers:
            with contextlib.suppress(Exception):
                await peer.stop()
        if self._janus is not None:
            await self._janus.close()
        if self._events is not None:
            await self._events.close()
        if self._http is not None:
            await self._http.close()

    def _path(self, socket: str) -> str:
        return f"{self.session[socket]}?ticket={self.session['ticket']}"

    def _ws_url(self, socket: str) -> str:
        return self.base_url.replace("http", "ws", 1) + self._path(socket)

    async def _read_events(self) -> None:
        assert self._events is not None
        while (frame := await self._events.receive()).type is aiohttp.WSMsgType.TEXT:
            self.messages.append(json.loads(frame.data))
            self.message_times.append(time.time())
        reason = str(frame.extra or "") if frame.type is aiohttp.WSMsgType.CLOSE else ""
        self.events_closed = (time.time(), self._events.close_code or 0, reason)

    async def _watch_media_socket(self, janus: JanusClient) -> None:
        await janus.closed.wait()
        self.media_closed_at = time.time()

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.heard_at.append(time.time())

    async def _watch(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.translated_frames.append((time.time(), frame.to_ndarray(format="rgb24")))  # type: ignore[union-attr]

    async def _meter(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float32) / 32768  # type: ignore[union-attr]
            rms = float(np.sqrt(np.mean(samples**2)))
            self.translated_peak = max(self.translated_peak, rms)
            if rms > 0.02:
                self.translated_sound_at.append(time.time())
