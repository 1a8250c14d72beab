"""The gateway's receiver of forwarded audio: real Opus packets in RTP over a real UDP socket, put back
in order, gaps filled with silence to keep time, late and duplicate packets dropped, strangers ignored."""

from __future__ import annotations

import asyncio
import fractions
import socket
import struct

import numpy as np
import pytest
from av import AudioFrame, CodecContext

from gateway.media.rtp import CLOCK_RESET_S, FRAME_SAMPLES, RtpReceiver, SenderClock, parse_rtp
from gateway.media.videoroom import address_of

RATE = 48_000


def opus_packets(seconds: float, hz: float = 440.0) -> list[bytes]:
    encoder = CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = RATE, "mono", "s16"
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16)
    packets: list[bytes] = []
    for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frame = AudioFrame.from_ndarray(pcm[i : i + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, i, fractions.Fraction(1, RATE)
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


def rtp(seq: int, ssrc: int, payload: bytes, extension: bool = False) -> bytes:
    first = 0x80 | (0x10 if extension else 0)
    header = struct.pack("!BBHII", first, 111, seq & 0xFFFF, seq * FRAME_SAMPLES, ssrc)
    if extension:  # a one-word header extension, as Janus adds for audio levels
        header += struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\x00\x00"
    return header + payload


def test_an_rtp_header_with_csrcs_extension_and_padding_is_parsed() -> None:
    packet = rtp(7, 1234, b"opus", extension=True)
    assert parse_rtp(packet) == (7, 7 * FRAME_SAMPLES, 1234, b"opus")
    padded = bytes([packet[0] | 0x20]) + packet[1:] + b"\x00\x00\x03"
    assert parse_rtp(padded) == (7, 7 * FRAME_SAMPLES, 1234, b"opus")
    assert parse_rtp(b"\x80\xc8" + bytes(20)) is None, "RTCP is not RTP"
    assert parse_rtp(b"hello") is None and parse_rtp(bytes(12)) is None


async def test_forwarded_opus_is_decoded_in_order_with_gaps_kept_in_time() -> None:
    receiver = await RtpReceiver.listen("127.0.0.1")
    track = receiver.open_track()
    packets = opus_packets(1.0)
    order = list(range(len(packets)))
    order[10], order[11] = order[11], order[10]  # reordered
    del order[20:23]  # three packets lost
    order.insert(30, 5)  # a late one
    order.insert(31, 31)  # a duplicate
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(rtp(0, 99, packets[0]), ("127.0.0.1", receiver.port))  # a stranger's SSRC
        for index in order:
            sender.sendto(
                rtp(1000 + index, track.ssrc, packets[index], extension=index % 2 == 0), ("127.0.0.1", receiver.port)
            )
        frames = [await asyncio.wait_for(track.recv(), 2) for _ in range(len(packets) - 1)]
    receiver.close()
    assert receiver.dropped == 1
    assert all(f.samples == FRAME_SAMPLES and f.sample_rate == RATE and f.layout.name == "mono" for f in frames)
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(len(frames))], "continuous time"
    levels = [float(np.abs(f.to_ndarray()).mean()) for f in frames]
    assert min(levels[20:23]) == 0 and track.lost == 3, "lost packets become silence; the reordered ones play"
    assert np.median(levels[40:]) > 3_000, "the tone comes through"


def test_audio_is_timed_by_when_it_was_sent_not_when_a_busy_loop_read_it() -> None:
    """Packets sent every 20 ms from t=100 s over a 30 ms path; a busy loop reads a second of them 0.2-1.2 s
    late. Their times stay within a millisecond of sending plus the fastest path, across the timestamp's wrap."""
    clock = SenderClock()
    start_ts = (1 << 32) - 10 * FRAME_SAMPLES  # wraps after ten packets
    errors = []
    for i in range(200):
        sent = 100.0 + i * 0.02
        late = 0.2 + 0.02 * (60 - i) if 50 <= i < 60 else 0.0  # read in one burst at packet 60
        pts = clock.stamp((start_ts + i * FRAME_SAMPLES) & 0xFFFFFFFF, sent + 0.03 + late + 0.001 * (i % 3))
        assert pts == i * FRAME_SAMPLES, "unwrapped, counted from the first packet"
        errors.append(abs(clock.time_of(pts) - (sent + 0.03)))
    assert max(errors[5:]) < 0.002, max(errors)
    clock.restart()  # the sender started over with another timestamp
    pts = clock.stamp(12345, 200.0)
    assert abs(clock.time_of(pts) - 200.0) < 1e-9
    later = clock.stamp(12345 + FRAME_SAMPLES, 200.02 + CLOCK_RESET_S + 1)  # a new clock: re-anchored
    assert abs(clock.time_of(later) - (200.02 + CLOCK_RESET_S + 1)) < 1e-9


async def test_janus_is_asked_to_forward_to_an_address_never_a_name() -> None:
    """Janus 1.1.2 given a host name (compose's `gateway`) forwarded to 127.0.0.1: the gateway resolves it."""
    assert await address_of("198.18.0.1", 5002) == "198.18.0.1"
    assert await address_of("localhost", 5002) in ("127.0.0.1", "::1")
    with pytest.raises(socket.gaierror):  # an OSError: the gateway logs "could not forward ...'s audio"
        await address_of("no-such-host.invalid", 5002)
