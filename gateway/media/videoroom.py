"""Janus VideoRoom, as the gateway uses it: rooms it owns, a monitor that learns who publishes what,
RTP forwards that take a participant's voice out of Janus (gateway/media/rtp.py), aiortc subscribers (a
participant's view of a feed, as tests and benchmarks play one), and aiortc publishers that put a
language feed into it.

Every room is private (not listed), joining it needs its pin and changing or destroying it needs its
secret; the gateway draws both and never hands them to a browser (the proxy adds the pin to a
participant's own join). aiortc sends its SDP complete with candidates (`trickle: false`), and takes
Janus's trickled candidates, should any come, through `addIceCandidate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from gateway.media.janus import Handle, JanusClient, JanusError, Json

log = logging.getLogger(__name__)

PLUGIN = "janus.plugin.videoroom"
# Janus ids are JSON numbers: stay within what a browser's double holds exactly.
MAX_ID = 2**53 - 1


def new_id() -> int:
    return secrets.randbelow(MAX_ID - 1) + 1


def join_body(keys: RoomKeys, ptype: str, **fields: Any) -> Json:
    """A VideoRoom join; the pin is left out when unknown (a browser's join, which the proxy completes)."""
    body: Json = {"request": "join", "ptype": ptype, "room": keys.room_id, **fields}
    if keys.pin:
        body["pin"] = keys.pin
    return body


@dataclass(frozen=True)
class RoomKeys:
    """A Janus room and the secrets that guard it (known to the gateway only)."""

    room_id: int = field(default_factory=new_id)
    pin: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(18))


@dataclass(frozen=True)
class Stream:
    """One published stream of a feed, as Janus describes it."""

    mid: str
    type: str  # "audio", "video" or "data"
    codec: str = ""


@dataclass(frozen=True)
class Feed:
    id: int
    display: str
    streams: tuple[Stream, ...]

    def mids(self, kind: str) -> list[str]:
        return [s.mid for s in self.streams if s.type == kind]

    @classmethod
    def from_janus(cls, raw: Json) -> Feed:
        streams = tuple(
            Stream(str(s.get("mid", "")), str(s.get("type", "")), str(s.get("codec", "")))
            for s in raw.get("streams", [])
            if not s.get("disabled")
        )
        return cls(int(raw["id"]), str(raw.get("display", "")), streams)


async def create_room(handle: Handle, admin_key: str, keys: RoomKeys, publishers: int, description: str) -> None:
    await handle.message(
        {
            "request": "create",
            "admin_key": admin_key,
            "room": keys.room_id,
            "description": description,
            "secret": keys.secret,
            "pin": keys.pin,
            "is_private": True,
            "publishers": publishers,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "lock_record": True,
            "permanent": False,
        }
    )


async def destroy_room(handle: Handle, keys: RoomKeys) -> None:
    with contextlib.suppress(JanusError):  # already gone (Janus restarted): nothing to destroy
        await handle.message({"request": "destroy", "room": keys.room_id, "secret": keys.secret})


async def kick(handle: Handle, keys: RoomKeys, feed_id: int) -> None:
    with contextlib.suppress(JanusError):  # already left
        await handle.message({"request": "kick", "room": keys.room_id, "secret": keys.secret, "id": feed_id})


async def forward_audio(
    handle: Handle, admin_key: str, keys: RoomKeys, feed_id: int, mid: str, host: str, port: int, ssrc: int
) -> int:
    """Have Janus forward one audio stream of a feed as plain RTP to host:port, under `ssrc`; returns
    Janus's id for the forward. Janus ends it by itself when the publisher stops. A host name is resolved
    here: Janus 1.1.2 given one (compose's `gateway`) forwarded to 127.0.0.1 (seen in `make image-test`)."""
    data, _ = await handle.message(
        {
            "request": "rtp_forward",
            "admin_key": admin_key,
            "room": keys.room_id,
            "secret": keys.secret,
            "publisher_id": feed_id,
            "host": await address_of(host, port),
            "streams": [{"mid": mid, "port": port, "ssrc": ssrc}],
        }
    )
    forwarders = data.get("forwarders", [])
    return int(forwarders[0]["stream_id"]) if forwarders else 0


async def address_of(host: str, port: int) -> str:
    """The first address `host` resolves to (itself when it is one), as a UDP sender would pick."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return str(found[0][4][0])


class Monitor:
    """A publisher handle that never publishes: Janus tells every participant of a room who starts and
    stops publishing, so the gateway learns of each participant's streams as they appear."""

    def __init__(self, on_feed: Callable[[Feed], None], on_gone: Callable[[int], None]) -> None:
        self.on_feed = on_feed
        self.on_gone = on_gone
        self.handle: Handle | None = None

    async def start(self, client: JanusClient, keys: RoomKeys, feed_id: int) -> None:
        self.handle = await client.attach(PLUGIN)
        self.handle.on_event = self._on_event
        data, _ = await self.handle.message(join_body(keys, "publisher", id=feed_id, display="babelroom-monitor"))
        self._publishers(data)

    async def stop(self) -> None:
        if self.handle is not None:
            await self.handle.detach()

    def _on_event(self, handle: Handle, message: Json) -> None:
        data = message.get("plugindata", {}).get("data", {})
        self._publishers(data)
        for key in ("unpublished", "leaving", "kicked"):
            gone = data.get(key)
            if isinstance(gone, int) and not isinstance(gone, bool):
                self.on_gone(gone)

    def _publishers(self, data: Json) -> None:
        for raw in data.get("publishers", []):
            self.on_feed(Feed.from_janus(raw))


class _Peer:
    """An aiortc peer connection on a Janus handle, with Janus's trickled candidates applied."""

    def __init__(self, rtc: RTCConfiguration) -> None:
        self.pc = RTCPeerConnection(rtc)
        self.handle: Handle | None = None
        self.closed = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self.closed.set()

    async def _attach(self, client: JanusClient) -> Handle:
        self.handle = await client.attach(PLUGIN)
        self.handle.on_event = self._on_event
        return self.handle

    def _on_event(self, handle: Handle, message: Json) -> None:
        if message.get("janus") == "hangup" or message.get("janus") == "detached":
            self.closed.set()
        elif message.get("janus") == "trickle":
            candidate = message.get("candidate", {})
            if candidate.get("candidate"):
                asyncio.get_running_loop().create_task(self._add_candidate(candidate))

    async def _add_candidate(self, raw: Json) -> None:
        text = str(raw["candidate"]).removeprefix("candidate:")
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = raw.get("sdpMid")
        candidate.sdpMLineIndex = raw.get("sdpMLineIndex")
        with contextlib.suppress(Exception):  # a candidate aiortc cannot use is simply not used
            await self.pc.addIceCandidate(candidate)

    async def stop(self) -> None:
        await self.pc.close()
        if self.handle is not None:
            await self.handle.detach()
        self.closed.set()


def _local_jsep(pc: RTCPeerConnection) -> Json:
    return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp, "trickle": False}


class Publisher(_Peer):
    """Publishes aiortc tracks into a room as one feed (a language's translated speech, later video)."""

    async def start(
        self, client: JanusClient, keys: RoomKeys, feed_id: int, display: str, tracks: list[MediaStreamTrack]
    ) -> None:
        handle = await self._attach(client)
        await handle.message(join_body(keys, "publisher", id=feed_id, display=display))
        for track in tracks:
            self.pc.addTransceiver(track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        _, answer = await handle.message({"request": "publish"}, jsep=_local_jsep(self.pc))
        if answer is None:
            raise JanusError(0, "Janus accepted the publisher without an SDP answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))


class Subscriber(_Peer):
    """Receives some streams of one feed; `tracks` fills in as they arrive, in the order asked."""

    def __init__(self, rtc: RTCConfiguration) -> None:
        super().__init__(rtc)
        self.tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks.put_nowait(track)

    async def start(self, client: JanusClient, keys: RoomKeys, feed_id: int, mids: list[str] | None = None) -> None:
        """Subscribe to the streams `mids` of a feed (all of them when None)."""
        handle = await self._attach(client)
        streams: list[dict[str, Any]] = [{"feed": feed_id, "mid": mid} for mid in mids] if mids else [{"feed": feed_id}]
        _, offer = await handle.message(join_body(keys, "subscriber", streams=streams))
        if offer is None:
            raise JanusError(0, "Janus accepted the subscription without an SDP offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await handle.message({"request": "start"}, jsep=_local_jsep(self.pc))
