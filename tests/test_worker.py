"""The worker runtime against a real redis-server: takeover, dead letters, schema errors, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from babelroom.supervisor import free_port, redis_argv
from pipeline.bus import FIELD, Bus, Delivery
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import Dropped, Service, SpeechSegment, StageFailure, Transcript, decode, encode
from tests.runtime_stage import LengthStage
from workers.base import Worker

ROOT = Path(__file__).resolve().parents[1]
CLAIM_IDLE_MS = 1000
FAST = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, message_timeout_s=10)


def segment(seq: int, samples: int = 800) -> SpeechSegment:
    return SpeechSegment(
        room="room1",
        speaker="ana",
        seq=seq,
        language="en",
        targets=("es",),
        start_sample=0,
        end_sample=samples,
        pcm=b"\x01\x00" * samples,
    ).stamped("captured")


def bus_options(redis_url: str, prefix: str, **overrides: int) -> BusOptions:
    values = {"claim_idle_ms": CLAIM_IDLE_MS, "max_deliveries": 3, "block_ms": 100, **overrides}
    return BusOptions(redis_url=redis_url, prefix=prefix, **values)


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(bus_options(redis_url, stream_prefix))
    yield bus
    await bus.close()


async def entries(bus: Bus, stream: str) -> list[Delivery]:
    return await bus.tail(stream, last_id="0", count=1000)


async def wait_for_entries(bus: Bus, stream: str, count: int, timeout_s: float) -> list[Delivery]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await entries(bus, stream)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{stream}: expected {count} entries within {timeout_s} s, got {len(await entries(bus, stream))}"
    )


def start_worker_process(redis_url: str, prefix: str, behaviour: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "BABELROOM_STREAM_PREFIX": prefix,
        "BEHAVIOUR": behaviour,
        "BABELROOM_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen([sys.executable, "-m", "tests.runtime_stage"], env=env, cwd=ROOT)


async def wait_until(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


async def test_killed_worker_message_is_taken_over_and_emitted_once(bus: Bus, redis_url: str) -> None:
    prefix = bus.options.prefix
    doomed = start_worker_process(redis_url, prefix, "slow")
    rescuer: subprocess.Popen[bytes] | None = None
    try:
        await bus.publish(segment(1))

        async def held_by_doomed() -> bool:
            return await pending(bus) == 1

        await wait_until(held_by_doomed, timeout_s=30)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = time.monotonic()

        rescuer = start_worker_process(redis_url, prefix, "ok")
        found = await wait_for_entries(bus, "mt", 1, timeout_s=30)
        takeover_s = time.monotonic() - killed_at
        print(f"takeover_s={takeover_s:.2f} claim_idle_ms={CLAIM_IDLE_MS}")
        # bound: claim idle + half a claim interval + the rescuer's start (python + imports) + margin
        assert takeover_s < CLAIM_IDLE_MS / 1000 * 1.5 + 8
        await asyncio.sleep(CLAIM_IDLE_MS / 1000 * 2)  # give any duplicate time to appear
        mt, results = await entries(bus, "mt"), await entries(bus, "results")
        assert len(mt) == 1 and len(results) == 1
        transcript = found[0].message
        assert isinstance(transcript, Transcript) and transcript.seq == 1 and transcript.text == "800 samples"
        assert await pending(bus) == 0
    finally:
        for proc in (doomed, rescuer):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


async def test_an_entry_that_kills_its_worker_is_dead_lettered_not_crash_looped(bus: Bus, redis_url: str) -> None:
    """Deliveries are counted before processing: after max_deliveries crashes the entry is given up, and
    the stage goes on to the next segment."""
    await bus.publish(dataclasses.replace(segment(1), room="poison"))
    starts, crashes = 0, 0
    deadline = time.monotonic() + 60
    worker = None
    try:
        while not await entries(bus, "dead") and time.monotonic() < deadline:
            if worker is None or worker.poll() is not None:
                crashes += worker is not None and worker.returncode == 3
                worker = start_worker_process(redis_url, bus.options.prefix, "die_on_poison")
                starts += 1
            await asyncio.sleep(0.1)
        [dead] = await entries(bus, "dead")
        await bus.publish(segment(2))
        [good] = await wait_for_entries(bus, "mt", 1, timeout_s=20)
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=10)
    print(f"worker starts={starts} crashes={crashes}")
    assert crashes == bus.options.max_deliveries
    assert isinstance(dead.message, StageFailure) and dead.message.room == "poison"
    assert "delivered 4 times without success: its worker died" in dead.message.error
    assert good.message is not None and good.message.seq == 2


async def test_a_segment_claimed_twice_is_emitted_once(bus: Bus) -> None:
    """A stalled worker's entry is claimed and finished by another; when the stalled one wakes up and
    commits too, nothing new is emitted downstream."""
    await bus.ensure_group("asr", "asr")
    await bus.publish(segment(7))
    [first] = await bus.read_group("asr", "asr", "stalled", count=1, block_ms=100)
    stalled_output = LengthStage().process(first.message)  # type: ignore[arg-type]

    worker = Worker(LengthStage(), bus, FAST, consumer="rescuer")
    task = asyncio.create_task(worker.run())
    try:

        async def acknowledged() -> bool:
            return await pending(bus) == 0

        await wait_until(acknowledged, timeout_s=10)
    finally:
        worker.stop()
        await task
    assert worker.processed == 1
    assert await bus.commit(first, "asr", stalled_output, "asr") == 0
    assert len(await entries(bus, "mt")) == 1


async def test_always_failing_message_is_dead_lettered_with_its_error(bus: Bus) -> None:
    stage = LengthStage("fail")
    worker = Worker(stage, bus, FAST, consumer="unlucky")
    task = asyncio.create_task(worker.run())
    original = segment(5)
    try:
        await bus.publish(original)
        [dead] = await wait_for_entries(bus, "dead", 1, timeout_s=20)
    finally:
        worker.stop()
        await task
    failure = dead.message
    assert isinstance(failure, StageFailure)
    assert failure.stage == "asr" and failure.attempts == 3 and stage.calls == 3
    assert "engine exploded on seq 5" in failure.error
    assert decode(failure.original) == original  # the original is kept whole, nothing lost
    assert await entries(bus, "mt") == []
    assert await pending(bus) == 0


async def test_newer_schema_is_dead_lettered_and_the_worker_carries_on(bus: Bus) -> None:
    future = bytearray(encode(segment(1)))
    struct.pack_into(">H", future, 2, 2)
    await bus.client.xadd(bus.stream("asr"), {FIELD: bytes(future)})
    await bus.publish(segment(2))
    worker = Worker(LengthStage(), bus, FAST, consumer="steady")
    task = asyncio.create_task(worker.run())
    try:
        [dead] = await wait_for_entries(bus, "dead", 1, timeout_s=10)
        [good] = await wait_for_entries(bus, "mt", 1, timeout_s=10)
    finally:
        worker.stop()
        await task
    assert isinstance(dead.message, StageFailure)
    assert "schema version 2 is not supported" in dead.message.error
    assert dead.message.original == bytes(future)
    assert good.message is not None and good.message.seq == 2


async def test_heartbeats_count_alive_workers_and_vanish_on_stop(bus: Bus) -> None:
    workers = [Worker(LengthStage(), bus, FAST, consumer=f"w{i}") for i in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]

    async def two_alive() -> bool:
        return (await bus.alive_workers()).get("asr") == 2

    await wait_until(two_alive, timeout_s=5)
    for w in workers:
        w.stop()
    await asyncio.gather(*tasks)
    assert (await bus.alive_workers()).get("asr", 0) == 0


async def test_sigterm_drains_the_message_in_flight(redis_url: str, stream_prefix: str) -> None:
    bus = Bus.connect(bus_options(redis_url, stream_prefix))
    stage = LengthStage("slow", slow_s=1.0)
    worker = Worker(stage, bus, FAST, consumer="drainer")
    task = asyncio.create_task(worker.run())
    try:
        await bus.publish(segment(3))
        await wait_until(lambda: asyncio.sleep(0, stage.calls == 1), timeout_s=10)
        worker.stop()
        await task
        assert len(await entries(bus, "mt")) == 1  # finished and emitted before stopping
    finally:
        await bus.close()


async def test_worker_survives_a_redis_that_lost_its_data(tmp_path: Path) -> None:
    port = free_port()

    def start_redis(data_dir: Path) -> subprocess.Popen[bytes]:
        data_dir.mkdir()
        return subprocess.Popen(redis_argv(port, str(data_dir)), stdout=subprocess.DEVNULL)

    server = start_redis(tmp_path / "first")
    bus = Bus.connect(bus_options(f"redis://127.0.0.1:{port}/0", "restart"))
    await wait_until(lambda: _pings(bus), timeout_s=10)
    worker = Worker(LengthStage(), bus, FAST, consumer="survivor")
    task = asyncio.create_task(worker.run())
    try:
        await bus.publish(segment(1))
        await wait_for_entries(bus, "mt", 1, timeout_s=10)
        server.terminate()
        server.wait(timeout=10)
        await asyncio.sleep(1.0)
        server = start_redis(tmp_path / "second")  # empty: the worker must recreate its group
        await wait_until(lambda: _pings(bus), timeout_s=10)
        await asyncio.sleep(1.0)
        await bus.publish(segment(2))
        [after] = await wait_for_entries(bus, "mt", 1, timeout_s=20)
        assert after.message is not None and after.message.seq == 2
    finally:
        worker.stop()
        await task
        await bus.close()
        server.terminate()
        server.wait(timeout=10)


async def pending(bus: Bus) -> int:
    try:
        return int((await bus.client.xpending(bus.stream("asr"), "asr"))["pending"])
    except ResponseError:  # the worker has not created its group yet
        return -1


async def _pings(bus: Bus) -> bool:
    try:
        return bool(await bus.client.ping())
    except Exception:
        return False


async def test_a_slow_message_is_not_taken_from_a_live_worker(redis_url: str, stream_prefix: str) -> None:
    """Processing longer than claim_idle_ms: the live worker keeps its claim; nobody redoes the work."""
    bus = Bus.connect(bus_options(redis_url, stream_prefix, claim_idle_ms=300))
    stages = [LengthStage("slow", slow_s=1.5), LengthStage("slow", slow_s=1.5)]
    workers = [Worker(stage, bus, FAST, consumer=f"w{i}") for i, stage in enumerate(stages)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await bus.publish(segment(9))
        await wait_for_entries(bus, "mt", 1, timeout_s=20)
        await asyncio.sleep(0.5)
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)
        await bus.close()
    assert sum(stage.calls for stage in stages) == 1


async def test_backlog_counts_waiting_and_in_progress_entries(bus: Bus) -> None:
    assert await bus.backlog("asr", "asr") == {"waiting": 0, "in_progress": 0}
    for seq in range(3):
        await bus.publish(segment(seq))
    assert await bus.backlog("asr", "asr") == {"waiting": 3, "in_progress": 0}
    await bus.ensure_group("asr", "asr")
    await bus.read_group("asr", "asr", "busy", count=1, block_ms=100)
    assert await bus.backlog("asr", "asr") == {"waiting": 2, "in_progress": 1}


async def test_dead_consumers_are_removed_once_they_hold_nothing(bus: Bus) -> None:
    await bus.ensure_group("asr", "asr")
    await bus.publish(segment(1))
    await bus.publish(segment(2))
    [done] = await bus.read_group("asr", "asr", "ghost-idle", count=1, block_ms=100)
    await bus.client.xack(bus.stream("asr"), "asr", done.entry_id)
    await bus.read_group("asr", "asr", "ghost-holding", count=1, block_ms=100)  # dies holding seq 2
    options = dataclasses.replace(FAST, consumer_sweep_s=0.2)
    worker = Worker(LengthStage(), bus, options, consumer="live")
    task = asyncio.create_task(worker.run())

    async def only_the_live_one() -> bool:
        infos = await bus.client.xinfo_consumers(bus.stream("asr"), "asr")
        return [info["name"] for info in infos] == [b"live"]

    try:
        await wait_until(only_the_live_one, timeout_s=15)
    finally:
        worker.stop()
        await task
    assert [d.message.seq for d in await entries(bus, "mt") if d.message] == [2]  # claimed before removal


async def test_work_past_its_deadline_is_dropped_with_a_result_and_the_service_travels_on(bus: Bus) -> None:
    late = dataclasses.replace(segment(1), service=Service(deadline=time.time() - 1))
    captions_only = dataclasses.replace(segment(2), service=Service(speech=False, deadline=time.time() + 60))
    await bus.publish(late)
    await bus.publish(captions_only)
    worker = Worker(LengthStage(), bus, FAST, consumer="punctual")
    task = asyncio.create_task(worker.run())
    try:
        found = await wait_for_entries(bus, "results", 2, timeout_s=10)
    finally:
        worker.stop()
        await task
    messages = {type(d.message).__name__: d.message for d in found}
    dropped, transcript = messages["Dropped"], messages["Transcript"]
    assert isinstance(dropped, Dropped) and (dropped.seq, dropped.stage, dropped.reason) == (1, "asr", "late")
    assert dropped.languages == ("es",) and dropped.stamp("asr") is not None
    assert isinstance(transcript, Transcript) and transcript.seq == 2
    assert transcript.service == captions_only.service  # carried from the segment to its transcript
    assert [d.message.seq for d in await entries(bus, "mt") if d.message] == [2]
    assert (worker.dropped, worker.processed) == (1, 1) and worker.service_s > 0
