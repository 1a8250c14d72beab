"""Retention against a real redis-server: acknowledged entries leave their streams, pending and unread ones
never do (so a dead worker's messages can still be claimed), the byte cap holds a stalled stream, and a
room that ended leaves no key and no audio behind once the retention has passed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from pipeline.bus import Bus, cancel_and_wait
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import Message, SpeechSegment
from pipeline.routes import ASR, DEAD, RESULTS, STREAMS
from tests.runtime_stage import LengthStage
from workers.base import Worker


def segment(seq: int, room: str = "room1", samples: int = 1600) -> SpeechSegment:
    return SpeechSegment(room=room, speaker="ana", seq=seq, language="en", targets=("es",),
                         end_sample=samples, pcm=b"\x01\x00" * samples)  # fmt: skip


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, retention_s=0, block_ms=100))
    yield bus
    await bus.close()


async def ids(bus: Bus, name: str) -> list[bytes | str | None]:
    return [entry_id for entry_id, _ in await bus.client.xrange(bus.stream(name)) or []]


async def test_only_acknowledged_entries_are_trimmed(bus: Bus) -> None:
    await bus.ensure_group(ASR, "asr")
    for seq in range(6):
        await bus.publish(segment(seq))
    read = await bus.read_group(ASR, "asr", "w1", count=4, block_ms=100)  # 0-3 delivered, 4-5 unread
    await bus.commit(read[0], "asr", [], "asr")  # 0 acknowledged
    await bus.commit(read[2], "asr", [], "asr")  # 2 acknowledged, but 1 before it still pending
    everything = await ids(bus, ASR)
    assert await bus.trim(ASR) == 1
    assert await ids(bus, ASR) == everything[1:]  # only 0: 1 is pending, so 2 waits behind it
    for delivery in (read[1], read[3]):
        await bus.commit(delivery, "asr", [], "asr")
    assert await bus.trim(ASR) == 3  # 1, 2 and 3: all acknowledged now
    assert len(await ids(bus, ASR)) == 2  # 4 and 5 were never read: kept


async def test_every_group_must_have_acknowledged(bus: Bus) -> None:
    for group in ("asr", "audit"):
        await bus.ensure_group(ASR, group)
    await bus.publish(segment(0))
    [delivery] = await bus.read_group(ASR, "asr", "w1", count=1, block_ms=100)
    await bus.commit(delivery, "asr", [], "asr")
    assert await bus.trim(ASR) == 0  # the second group has not read it
    [other] = await bus.read_group(ASR, "audit", "a1", count=1, block_ms=100)
    assert await bus.trim(ASR) == 0  # read, still pending there
    await bus.commit(other, "audit", [], "audit")
    assert await bus.trim(ASR) == 1


async def test_acknowledged_entries_stay_for_the_retention(redis_url: str, stream_prefix: str) -> None:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, retention_s=30, block_ms=100))
    try:
        await bus.ensure_group(ASR, "asr")
        await bus.publish(segment(0))
        [delivery] = await bus.read_group(ASR, "asr", "w1", count=1, block_ms=100)
        await bus.commit(delivery, "asr", [], "asr")
        assert await bus.trim(ASR) == 0
        assert await bus.trim(ASR, now=time.time() + 31) == 1
        await bus.publish(segment(1), stream=RESULTS)  # a stream no group reads: by age alone
        assert await bus.trim(RESULTS) == 0
        assert await bus.trim(RESULTS, now=time.time() + 31) == 1
    finally:
        await bus.close()


async def test_dead_letters_keep_their_own_retention(bus: Bus) -> None:
    await bus.publish(segment(0), stream=DEAD)
    assert await bus.trim(DEAD) == 0  # an hour by default, for an operator
    assert await bus.trim(DEAD, now=time.time() + bus.options.dead_retention_s + 1) == 1


async def test_a_stalled_stream_is_held_to_its_byte_cap(redis_url: str, stream_prefix: str) -> None:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, max_bytes=200_000))
    try:
        await bus.ensure_group(ASR, "asr")
        for seq in range(40):  # 32 KB of audio each, nobody reading: about 1.3 MB
            await bus.publish(segment(seq, samples=16_000))
        everything = await ids(bus, ASR)
        removed = await bus.trim(ASR)
        left = await ids(bus, ASR)
        assert removed > 30 and len(left) == 40 - removed
        assert int(await bus.client.memory_usage(bus.stream(ASR)) or 0) <= 200_000
        assert left == everything[removed:]  # the oldest went
    finally:
        await bus.close()


async def test_a_dead_workers_entries_survive_trimming_and_are_claimed(redis_url: str, stream_prefix: str) -> None:
    options = BusOptions(redis_url=redis_url, prefix=stream_prefix, retention_s=0, claim_idle_ms=300, block_ms=100)
    bus = Bus.connect(options)
    try:
        await bus.ensure_group(ASR, "asr")
        for seq in range(3):
            await bus.publish(segment(seq))
        held = await bus.read_group(ASR, "asr", "dead-worker", count=3, block_ms=100)  # then it "died"
        await bus.trim(ASR)
        assert len(await ids(bus, ASR)) == 3
        worker = Worker(LengthStage(), bus, WorkerOptions(heartbeat_ttl_s=0.5), consumer="survivor")
        task = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 10
            while worker.processed < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
        assert worker.processed == 3, [d.entry_id for d in held]
        assert await bus.trim(ASR) == 3  # claimed, done and acknowledged: now they go
        assert await ids(bus, ASR) == []
    finally:
        await bus.close()


async def test_a_room_that_ended_leaves_no_audio_and_no_key(redis_url: str, stream_prefix: str) -> None:
    """The real worker runtime, trimming as it serves: once the meeting's segments are done and the
    retention has passed, no stream holds anything of it and no key names the room. The gateway's sweep
    (every stream) runs beside the worker's (its own), as in the service."""
    options = BusOptions(redis_url=redis_url, prefix=stream_prefix, retention_s=0.5, dedup_ttl_s=2,
                         trim_interval_s=0.2, block_ms=100)  # fmt: skip
    bus = Bus.connect(options)
    worker = Worker(LengthStage(), bus, WorkerOptions(heartbeat_ttl_s=1.0), consumer="w1")
    sink = Worker(Sink(), bus, WorkerOptions(heartbeat_ttl_s=1.0), consumer="w2")  # takes the transcripts
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(sink.run())]
    gateway_sweep = asyncio.create_task(bus.trim_forever(STREAMS))
    try:
        for seq in range(5):
            await bus.publish(segment(seq, room="meeting-42"))
        deadline = time.monotonic() + 10
        while sink.processed < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert worker.processed == 5 and sink.processed == 5
        assert await bus.client.keys(f"{stream_prefix}:*meeting-42*")  # its dedup keys, while it is fresh
        deadline = time.monotonic() + 10
        while (await room_entries(bus) or await room_keys(bus, "meeting-42")) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await room_entries(bus) == {}  # no segment's audio, no transcript
        assert await room_keys(bus, "meeting-42") == []
    finally:
        await cancel_and_wait([gateway_sweep])
        for each in (worker, sink):
            each.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await bus.close()


class Sink:
    """The mt stage's place in this test: takes transcripts, emits nothing."""

    kind = "mt"

    def load(self) -> None:
        pass

    def process(self, message: Message) -> Sequence[Message]:
        return []


async def room_entries(bus: Bus) -> dict[str, int]:
    """How many entries each stream holds (this test's streams carry only the one room)."""
    lengths = {name: int(await bus.client.xlen(bus.stream(name))) for name in STREAMS}
    return {name: n for name, n in lengths.items() if n}


async def room_keys(bus: Bus, room: str) -> list[bytes]:
    return [key async for key in bus.client.scan_iter(match=f"{bus.options.prefix}:*{room}*")]


def test_options_refuse_a_negative_retention() -> None:
    with pytest.raises(ValueError, match="negative"):
        BusOptions(retention_s=-1)
    with pytest.raises(ValueError, match="BABELROOM_RETENTION_S"):
        BusOptions.from_env({"BABELROOM_RETENTION_S": "soon"})
    assert BusOptions.from_env({"BABELROOM_RETENTION_S": "0"}).retention_s == 0
