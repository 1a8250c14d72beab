"""The gateway's own tasks are supervised, and its results reader survives anything on `results`:
malformed entries are dead-lettered with their reason, once, and the reader carries on."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from gateway.options import GatewayOptions
from gateway.rooms.results import ResultsReader
from gateway.rooms.tasks import TaskSupervisor
from gateway.web.app import create_app
from gateway.web.health import GATEWAY_KEY
from pipeline.bus import FIELD, Bus, cancel_and_wait
from pipeline.config import BusOptions
from pipeline.messages import Message, SpeechSegment, StageFailure, Transcript
from tests.malformed import malformed_entries

WAIT_S = 15.0
TRANSCRIPT = Transcript(room="r", speaker="ana", seq=1, language="en", targets=("es",), text="hello")


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def dead_letters(bus: Bus) -> list[StageFailure]:
    found = [d.message for d in await bus.tail("dead", "0-0", count=10_000)]
    return [m for m in found if isinstance(m, StageFailure)]


async def test_a_failing_task_is_restarted_and_health_says_so() -> None:
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.sleep(3600)

    tasks = TaskSupervisor(backoff_s=(0.05, 0.1), healthy_after_s=0.5)
    tasks.supervise("flaky", flaky)
    try:
        await eventually(lambda: len(runs) == 3, "a third run")
        state = tasks.status()["flaky"]
        assert state == {"running": True, "restarts": 2, "last_error": "RuntimeError: boom 2"}
        assert runs[2] - runs[1] >= 0.1 - 0.01  # the backoff grows
        assert not tasks.healthy  # restarted moments ago: not yet steady
        await asyncio.sleep(0.6)
        assert tasks.healthy
    finally:
        await tasks.stop()


async def test_malformed_results_are_dead_lettered_once_and_the_reader_carries_on(bus: Bus) -> None:
    handled: list[Message] = []

    def handle(message: Message) -> None:
        if message.seq == 666:
            raise ValueError("sample_rate must be positive")
        handled.append(message)

    readers = [ResultsReader(bus, handle), ResultsReader(bus, handle)]  # two gateways
    tasks = TaskSupervisor()
    for i, reader in enumerate(readers):
        reader.last_id = "0-0"
        tasks.supervise(f"results{i}", reader.run)
    bad = malformed_entries(TRANSCRIPT, 200)
    try:
        for _, data in bad:
            await bus.client.xadd(bus.stream("results"), {FIELD: data})
        await bus.publish(SpeechSegment(room="r", speaker="ana", seq=2), "results")  # no business there
        await bus.publish(Transcript(room="r", speaker="ana", seq=666), "results")  # the handler refuses it
        await bus.publish(TRANSCRIPT)
        await eventually(lambda: len(handled) == 2, "the good result at both readers")
        await eventually(lambda: all(r.dead_lettered == len(bad) + 2 for r in readers), "every bad entry seen")
    finally:
        await tasks.stop()
    assert handled == [TRANSCRIPT, TRANSCRIPT]
    failures = await dead_letters(bus)
    assert len(failures) == len(bad) + 2  # once each, though two gateways saw them
    assert {f.stage for f in failures} == {"gateway"}
    assert sum("undecodable message" in f.error for f in failures) == len(bad)
    assert any("segment message does not belong on results" in f.error for f in failures)
    assert any("sample_rate must be positive" in f.error for f in failures)
    assert {f.original for f in failures} >= {data for _, data in bad}  # the bytes kept whole
    assert tasks.status()["results0"]["restarts"] == 0


async def test_a_crashed_reader_resumes_where_it_stopped(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[int] = []
    reader = ResultsReader(bus, lambda m: handled.append(m.seq))
    reader.last_id = "0-0"
    real_tail = bus.tail
    calls = 0

    async def tail_that_breaks_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise AttributeError("a bug in the reader")
        return await real_tail(*args, **kwargs)

    monkeypatch.setattr(bus, "tail", tail_that_breaks_once)
    tasks = TaskSupervisor(backoff_s=(0.05,))
    for seq in range(3):
        await bus.publish(Transcript(room="r", speaker="ana", seq=seq))
    tasks.supervise("results", reader.run)
    try:
        await eventually(lambda: len(handled) == 3, "the first three")
        await eventually(lambda: tasks.status()["results"]["restarts"] == 1, "the restart")
        for seq in range(3, 6):
            await bus.publish(Transcript(room="r", speaker="ana", seq=seq))
        await eventually(lambda: len(handled) == 6, "the next three")
    finally:
        await tasks.stop()
    assert handled == list(range(6))


async def test_a_reader_blocked_in_redis_always_stops(bus: Bus) -> None:
    """redis-py sometimes swallows a cancellation that lands in a blocking XREAD (about 1 in 4 here) and reads on:
    the gateway's stop then waited forever. Stopping cancels again until the task has ended."""
    for i in range(40):
        reader = ResultsReader(bus, lambda m: None)
        reader.last_id = "0-0"
        task = asyncio.create_task(reader.run())
        if i % 2:  # half the time a reply is on its way when the cancel comes
            await bus.publish(Transcript(room="r", speaker="ana", seq=i))
        await asyncio.sleep(random.uniform(0, 0.01))
        await asyncio.wait_for(cancel_and_wait([task]), WAIT_S)
        assert task.done()


async def test_healthz_tells_the_truth_about_a_failing_reader(
    redis_url: str, stream_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    app = create_app(bus, GatewayOptions())
    async with TestServer(app, host="127.0.0.1") as server, ClientSession(str(server.make_url(""))) as http:
        async with http.get("/healthz") as reply:
            before = await reply.json()

        async def broken_tail(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the reader broke")

        monkeypatch.setattr(bus, "tail", broken_tail)
        tasks = app[GATEWAY_KEY].tasks
        await eventually(lambda: tasks.status()["results"]["restarts"] >= 1, "a restart of the reader")
        async with http.get("/healthz") as reply:
            after = await reply.json()
    assert before["tasks"]["results"] == {"running": True, "restarts": 0, "last_error": ""}
    assert after["status"] == "degraded"
    assert "a gateway task failed and was restarted recently" in after["reasons"]
    assert after["tasks"]["results"]["last_error"] == "RuntimeError: the reader broke"
