"""Segments spoken while Redis is away are held and published in order once it is back."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np

from babelroom.supervisor import free_port, redis_argv
from gateway.bridge.frames import FramePath
from gateway.bridge.ingest import Ingest
from gateway.media.playout import PlayoutOptions
from gateway.options import GatewayOptions
from gateway.rooms.overload import OverloadMonitor, OverloadOptions
from gateway.rooms.room import Participant, Profile, Room
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.metrics import Metrics
from pipeline.segmenter import Segment


def segment(index: int) -> Segment:
    start = index * 16_000
    return Segment(np.zeros(8_000, dtype=np.float32), start, start + 8_000, start, start + 8_000, "pause")


async def test_segments_published_during_a_redis_outage_arrive_in_order(tmp_path: Path) -> None:
    port = free_port()
    bus = Bus.connect(BusOptions(redis_url=f"redis://127.0.0.1:{port}/0", prefix="outbox"))
    ingest = Ingest(bus, GatewayOptions(), OverloadMonitor(bus, OverloadOptions(), Metrics()), FramePath(bus))
    room = Room("r", PlayoutOptions())
    speaker = Participant("ana", "r", Profile("Ana", "en", "en"))
    room.add(speaker)
    for index in range(3):  # no Redis at all yet: every segment is held
        await ingest.publish(room, speaker, segment(index), captured_at=float(index), targets=("es",), seq=index)
    assert ingest.stats.segments_held == 3 and ingest.stats.segments_published == 0

    server = subprocess.Popen(redis_argv(port, str(tmp_path)), stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            await ingest.flush_outbox()
            if ingest.stats.segments_published == 3:
                break
            await asyncio.sleep(0.1)
        entries = await bus.tail("asr", "0-0", count=10)
        assert [d.message.seq for d in entries if d.message] == [0, 1, 2]
        assert all(d.message and d.message.stamp("published") for d in entries)
        assert ingest.stats.segments_dropped == 0
    finally:
        await bus.close()
        server.terminate()
        server.wait(timeout=10)
