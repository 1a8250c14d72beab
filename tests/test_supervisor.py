"""`babelroom up`'s supervisor: restarts crashed children with a capped backoff (Redis on its own data, losing
no queued segment), stops all, leaves none behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from babelroom import supervisor
from babelroom.supervisor import Child, Supervisor
from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from tests.runtime_stage import LengthStage
from tests.test_worker import segment
from workers.base import Worker


def python_child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ))


def test_crashed_child_is_restarted_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", (0.1, 0.3))
    crasher = python_child("crasher", "import sys; sys.exit(3)")
    steady = python_child("steady", "import time; time.sleep(60)")
    sup = Supervisor([crasher, steady])
    for child in sup.children:
        child.start()
    deadline = time.monotonic() + 15
    while len(crasher.history) < 3 and time.monotonic() < deadline:
        sup.check_children()
        time.sleep(0.05)
    assert crasher.history[:3] == [3, 3, 3]
    assert steady.history == [] and steady.process is not None and steady.process.poll() is None
    sup.stop_all()
    assert steady.process.poll() is not None


def test_stop_kills_a_child_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 0.5)
    stubborn = python_child(
        "stubborn",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    sup = Supervisor([stubborn])
    stubborn.start()
    time.sleep(0.5)
    started = time.monotonic()
    sup.stop_all()
    assert stubborn.process is not None and stubborn.process.poll() is not None
    assert time.monotonic() - started < 5


def test_restart_backoff_is_capped_at_a_few_seconds_and_resets() -> None:
    assert max(supervisor.RESTART_BACKOFF_S) <= 3.0 and supervisor.HEALTHY_AFTER_S <= 10.0
    crasher = python_child("crasher", "import sys; sys.exit(1)")
    sup = Supervisor([crasher])
    crasher.start()
    delays = []
    for _ in range(6):
        assert crasher.process is not None
        crasher.process.wait(timeout=10)
        sup.check_children()
        assert crasher.restart_at is not None
        delays.append(round(crasher.restart_at - time.monotonic(), 1))
        crasher.start()
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    crasher.started_at -= supervisor.HEALTHY_AFTER_S + 1  # as if it had run healthily for a while
    crasher.process.wait(timeout=10)  # type: ignore[union-attr]
    sup.check_children()
    assert round(crasher.restart_at - time.monotonic(), 1) == 0.5  # type: ignore[operator]
    sup.stop_all()


async def test_a_killed_redis_is_restarted_on_its_data_and_loses_no_queued_segment(tmp_path: Path) -> None:
    """Segments queued (and one in progress) when Redis is SIGKILLed are all processed, once, after the
    supervisor restarts it on the same data dir."""
    redis_proc, url = supervisor.redis_child(dict(os.environ), str(tmp_path))
    sup = Supervisor([redis_proc])
    redis_proc.start()
    supervisor.wait_for_redis(url)
    bus = Bus.connect(BusOptions(redis_url=url, prefix="durable", claim_idle_ms=1000, block_ms=100))
    stage = LengthStage("slow", slow_s=0.3)
    worker = Worker(stage, bus, WorkerOptions(heartbeat_interval_s=0.2, concurrency=1), consumer="w")
    task = asyncio.create_task(worker.run())
    try:
        for seq in range(8):
            await bus.publish(segment(seq))
        while stage.calls < 2:  # one done, one in progress, six waiting
            await asyncio.sleep(0.02)
        assert redis_proc.process is not None
        redis_proc.process.send_signal(signal.SIGKILL)
        redis_proc.process.wait(timeout=10)
        while redis_proc.history == [] or redis_proc.restart_at is not None:
            sup.check_children()  # sees the death, then restarts it after the backoff
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while len(await _seqs(bus)) < 8 and time.monotonic() < deadline:
            sup.check_children()
            await asyncio.sleep(0.1)
        seqs = await _seqs(bus)
    finally:
        worker.stop()
        await task
        await bus.close()
        sup.stop_all()
    assert redis_proc.history == [-signal.SIGKILL]
    assert sorted(seqs) == list(range(8)), f"lost or duplicated: {seqs}"


async def _seqs(bus: Bus) -> list[int]:
    try:
        return [d.message.seq for d in await bus.tail("mt", "0-0", count=100) if d.message]
    except RedisError:
        return []
