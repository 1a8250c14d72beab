"""How a participant's voice leaves Janus for the gateway: Janus forwards it as plain RTP (`rtp_forward`)
to one UDP socket of the gateway, one SSRC per participant, and the gateway decodes the Opus itself.

Why rtp_forward and not an aiortc subscriber per participant: a subscriber is a whole WebRTC peer (ICE,
DTLS, SRTP, RTCP, a jitter buffer and a decoder thread) in Python, which cost about 0.035 cores per
participant on this machine, and it takes over a second of ICE and DTLS before the first packet, so
the first words of someone who speaks as they join were lost. A forward costs Janus no encryption and
the gateway a datagram parse and an Opus decode per packet, and it starts with the next packet.
What it asks: Janus must reach the gateway's UDP port (`BABELROOM_RTP_HOST`, loopback when Janus is
local); the RTP is not encrypted, so across hosts keep it on a private network. Forwarding is locked
behind Janus's admin key, which only the gateway holds, and the socket takes only packets from the
SSRCs the gateway itself assigned to its forwards.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple, cast

from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, CodecContext, Packet

log = logging.getLogger(__name__)

OPUS_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms of Opus at 48 kHz, what browsers send
# Frames decoded but not yet read by the segmenter; a reader that falls this far behind loses the oldest.
QUEUE_FRAMES = 250
# A packet this far behind the next one due (by sequence number) is too late to use, and one this far
# ahead means the sender started over.
REORDER_WINDOW = 50
# Packets that may wait for a missing earlier one (60 ms) before it is given up as lost: enough for the
# reordering a network does, short enough to add no delay worth hearing.
HOLD_PACKETS = 3
MAX_CONCEALED_FRAMES = 10  # a gap of lost packets up to this long is filled with silence, keeping time
# The sender's clock may run this much slower than ours (s per s) before its times drift: clocks differ by
# well under 100 ppm. A packet later than the clock expects by more than CLOCK_RESET_S means a new clock.
CLOCK_CREEP = 1e-3
CLOCK_RESET_S = 10.0
_HEADER = struct.Struct("!BBHII")


@dataclass
class SenderClock:
    """When the sender captured each RTP timestamp, on our wall clock, up to the fastest path's delay.

    The gateway's event loop may read a packet late (a busy loop, several rooms); timing the audio by when
    it was read puts it seconds after it was spoken, and the echo guard then looks for echoes seconds away
    from where they are. The RTP timestamp counts the sender's samples, so a timestamp's time is
    timestamp / rate + offset, where the offset is the smallest (arrival - timestamp / rate) seen: the packet
    that came through fastest. The offset creeps later by CLOCK_CREEP per second (a slower sender clock)
    and drops at once when a packet comes faster."""

    rate: int = OPUS_RATE
    _last: int | None = None  # the last timestamp as sent (32 bits)
    _unwrapped: int = 0  # the same, counted on past the wrap, from the first packet's
    _offset: float | None = None
    _offset_at: float = 0.0  # arrival time the offset was last set

    def stamp(self, timestamp: int, arrival: float) -> int:
        """Observe a packet; its timestamp unwrapped (from 0 at the first packet)."""
        if self._last is not None:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            self._unwrapped += delta - (1 << 32) if delta >= 1 << 31 else delta
        self._last = timestamp
        candidate = arrival - self._unwrapped / self.rate
        if self._offset is not None:
            allowed = self._offset + CLOCK_CREEP * (arrival - self._offset_at)
            if candidate <= allowed or candidate - allowed < CLOCK_RESET_S:
                self._offset = min(candidate, allowed)
                self._offset_at = arrival
                return self._unwrapped
        self._offset, self._offset_at = candidate, arrival
        return self._unwrapped

    def restart(self) -> None:
        """The sender started over: its timestamps say nothing of the old ones."""
        self._last, self._offset = None, None

    def time_of(self, timestamp: int) -> float:
        """Wall time of an unwrapped timestamp; now, before any packet came."""
        return time.time() if self._offset is None else self._offset + timestamp / self.rate


class RtpAudioTrack:
    """One participant's forwarded audio, decoded to 20 ms mono s16 frames at 48 kHz, read with `recv`.
    A frame's pts is its RTP timestamp (unwrapped); `end_time` says when its last sample was spoken."""

    kind = "audio"

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.packets = 0
        self.lost = 0
        self._decoder = CodecContext.create("libopus", "r")
        self._decoder.format = "s16"
        self._decoder.layout = "mono"  # libopus mixes down for us: the segmenter wants mono
        self._decoder.sample_rate = OPUS_RATE
        self._frames: asyncio.Queue[AudioFrame | None] = asyncio.Queue(QUEUE_FRAMES)
        self._expected: int | None = None  # the next sequence number to decode
        self._pending: dict[int, tuple[int, bytes]] = {}  # (pts, payload) arrived ahead of a missing one
        self._pts = 0  # the pts after the last frame: a concealed gap's silence goes there
        self.clock = SenderClock()

    async def recv(self) -> AudioFrame:
        frame = await self._frames.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        self._put(None)

    def end_time(self, frame: AudioFrame) -> float:
        """Wall time by which the frame's last sample was captured and could reach us (SenderClock). A packet's
        timestamp is its first sample's, and the packet leaves once its last sample is in, so the fastest
        arrival maps the first sample's timestamp to a time after the last one."""
        assert frame.pts is not None
        return self.clock.time_of(frame.pts)

    def receive(self, seq: int, timestamp: int, payload: bytes, arrival: float) -> None:
        """Take one RTP packet's Opus payload, in whatever order the network delivered it (arrival: wall time)."""
        if self._expected is None:
            self._expected = seq
        ahead = (seq - self._expected) & 0xFFFF
        if ahead > 0xFFFF - REORDER_WINDOW:
            return  # already played (a duplicate), or too late to play
        if ahead >= REORDER_WINDOW:  # far ahead: the sender started over
            self._pending.clear()
            self._expected = seq
            self.clock.restart()
        pts = self.clock.stamp(timestamp, arrival)
        self._pending[seq] = (pts, payload)
        self._drain()

    def _drain(self) -> None:
        """Decode what is in order; a packet missing while HOLD_PACKETS later ones wait is given up."""
        assert self._expected is not None
        while True:
            while self._expected in self._pending:
                self._decode(*self._pending.pop(self._expected))
                self._expected = (self._expected + 1) & 0xFFFF
            if len(self._pending) <= HOLD_PACKETS:
                return
            resume = min(self._pending, key=lambda s: (s - self._expected) & 0xFFFF)  # type: ignore[operator]
            gap = (resume - self._expected) & 0xFFFF
            self.lost += gap
            for _ in range(min(gap, MAX_CONCEALED_FRAMES)):
                self._put(self._silence())
            self._expected = resume

    def _decode(self, pts: int, payload: bytes) -> None:
        self.packets += 1
        self._pts = pts
        try:
            frames = self._decoder.decode(Packet(payload))
        except ValueError as exc:  # av raises InvalidDataError (a ValueError) for a broken packet
            log.warning("skipped an undecodable Opus packet (ssrc %d): %s", self.ssrc, exc)
            return
        for frame in frames:
            self._stamp(frame)
            self._put(frame)

    def _silence(self) -> AudioFrame:
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        self._stamp(frame)
        return frame

    def _stamp(self, frame: AudioFrame) -> None:
        frame.sample_rate = OPUS_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        self._pts += frame.samples

    def _put(self, frame: AudioFrame | None) -> None:
        if self._frames.full():
            self._frames.get_nowait()
        self._frames.put_nowait(frame)


class RtpReceiver(asyncio.DatagramProtocol):
    """The gateway's one UDP socket for forwarded audio: packets go to the track of their SSRC."""

    def __init__(self) -> None:
        self.tracks: dict[int, RtpAudioTrack] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0  # packets with an SSRC we did not ask for, or not RTP at all

    @classmethod
    async def listen(cls, host: str, port: int = 0) -> RtpReceiver:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(cls, local_addr=(host, port))
        protocol.transport = transport  # connection_made comes a loop turn later
        return protocol

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def open_track(self) -> RtpAudioTrack:
        """A track for a new forward, with an SSRC no other forward uses."""
        ssrc = secrets.randbits(32)
        while ssrc in self.tracks or ssrc == 0:
            ssrc = secrets.randbits(32)
        track = RtpAudioTrack(ssrc)
        self.tracks[ssrc] = track
        return track

    def close_track(self, track: RtpAudioTrack) -> None:
        self.tracks.pop(track.ssrc, None)
        track.stop()

    def close(self) -> None:
        for track in list(self.tracks.values()):
            self.close_track(track)
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes | int, ...]) -> None:
        parsed = parse_rtp(data)
        track = self.tracks.get(parsed.ssrc) if parsed else None
        if parsed is None or track is None:
            self.dropped += 1
            return
        if parsed.payload:
            track.receive(parsed.seq, parsed.timestamp, parsed.payload, time.time())


class RtpPacket(NamedTuple):
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """An RTP packet's sequence number, timestamp, SSRC and payload (RFC 3550), or None for anything else."""
    if len(data) < _HEADER.size:
        return None
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2 or 72 <= second & 0x7F <= 76:  # not version 2, or RTCP (payload types 200-204)
        return None
    offset = _HEADER.size + 4 * (first & 0x0F)  # CSRCs
    if first & 0x10:  # a header extension: 16-bit profile, 16-bit length in 32-bit words
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding: its length is the last byte
        end -= data[-1] if data else 0
    if offset > end:
        return None
    return RtpPacket(seq, timestamp, ssrc, data[offset:end])
