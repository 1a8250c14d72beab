"""Stamps tell where the time went: each worker stamps when it takes a message and when it is done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import SpeechSegment, Transcript
from pipeline.stamps import format_spans, stage_spans
from tests.runtime_stage import LengthStage
from workers.base import Worker


def test_spans_split_queue_hops_from_work() -> None:
    stamps = (("captured", 10.0), ("published", 10.25), ("asr.start", 10.5), ("asr", 11.5), ("mt.start", 11.502))
    spans = stage_spans(stamps)
    assert [name for name, _ in spans] == ["captured->published", "asr queue", "asr", "mt queue"]
    assert [round(s, 3) for _, s in spans] == [0.25, 0.25, 1.0, 0.002]
    assert format_spans(stamps) == "captured->published=250ms asr_queue=250ms asr=1000ms mt_queue=2ms"


def test_spans_of_stamps_without_start_stamps() -> None:
    assert stage_spans((("asr", 1.0), ("mt", 1.25))) == [("asr->mt", 0.25)]
    assert stage_spans(()) == [] and stage_spans((("asr", 1.0),)) == []


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, block_ms=100))
    yield bus
    await bus.close()


async def test_worker_stamps_when_it_takes_a_message(bus: Bus) -> None:
    worker = Worker(LengthStage(), bus, WorkerOptions(heartbeat_interval_s=0.2), consumer="stamper")
    task = asyncio.create_task(worker.run())
    segment = SpeechSegment(room="r", speaker="s", seq=1, language="en", end_sample=800, pcm=b"\0\0" * 800)
    try:
        await bus.publish(segment.stamped("published"))
        deadline = time.monotonic() + 10
        while not (found := await bus.tail("mt", last_id="0")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    transcript = found[0].message
    assert isinstance(transcript, Transcript)
    assert [stage for stage, _ in transcript.stamps] == ["published", "asr.start", "asr"]
    assert [name for name, _ in stage_spans(transcript.stamps)] == ["asr queue", "asr"]
