"""Results go home: with several media nodes, each node reads only its own rooms' results (counted), a dead node's
results stream leaves Redis after the retention, every mt worker gets the warm-up hints, and a worker that Redis
refuses says why and retries. Real redis-servers, real worker runtimes (a minimal stage for the runtime itself)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis

from babelroom import netns
from babelroom.supervisor import free_port
from gateway.rooms.results import ResultsReader
from gateway.rooms.tasks import TaskSupervisor
from pipeline.bus import Bus, cancel_and_wait
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import Message, SpeechSegment, Transcript, WarmUp, encode
from pipeline.routes import RESULTS, WARM_UP, results_stream
from tests.runtime_stage import LengthStage
from tests.test_gateway_tasks import eventually
from workers.base import Worker

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 20.0
FAST = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, message_timeout_s=10)
SEGMENTS = {"node-a": 3, "node-b": 5}


def segment(node: str, seq: int) -> SpeechSegment:
    return SpeechSegment(
        room=f"room-of-{node}", speaker="ana", seq=seq, node=node, language="en", targets=("es",),
        end_sample=800, pcm=b"\x01\x00" * 800,
    ).stamped("captured")  # fmt: skip


async def test_each_node_reads_only_its_own_rooms_results(bus: Bus) -> None:
    worker = Worker(LengthStage(), bus, FAST)
    handled: dict[str, list[Message]] = {node: [] for node in SEGMENTS}
    readers = {node: ResultsReader(bus, handled[node].append, node) for node in SEGMENTS}
    tasks = TaskSupervisor()
    for node, reader in readers.items():
        reader.last_id = "0-0"
        tasks.supervise(node, reader.run)
    serving = asyncio.create_task(worker.run())
    try:
        for node, count in SEGMENTS.items():
            for seq in range(count):
                await bus.publish(segment(node, seq))
        await eventually(lambda: all(len(handled[n]) == c for n, c in SEGMENTS.items()), "every node's results")
        await asyncio.sleep(0.5)  # time for a stray result to arrive where it should not
    finally:
        worker.stop()
        await cancel_and_wait([serving])
        await tasks.stop()
    print({node: reader.read for node, reader in readers.items()})
    for node, count in SEGMENTS.items():
        assert readers[node].read == count, f"{node} read {readers[node].read} entries for its {count} segments"
        assert {m.node for m in handled[node]} == {node}
        assert all(isinstance(m, Transcript) and m.room == f"room-of-{node}" for m in handled[node])
        assert readers[node].dead_lettered == 0
    assert await bus.client.xlen(bus.stream(RESULTS)) == 0, "nothing went to the shared stream"


async def test_a_dead_nodes_results_leave_redis_after_the_retention(redis_url: str, stream_prefix: str) -> None:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, retention_s=30))
    try:
        stream = results_stream("node-gone")
        for seq in range(3):
            await bus.publish(Transcript(room="r", speaker="ana", seq=seq, node="node-gone", text="hola"), stream)
        assert await bus.trim(stream, drop_empty=True) == 0, "younger than the retention: kept"
        assert await bus.client.exists(bus.stream(stream))
        assert await bus.trim(stream, now=time.time() + 31, drop_empty=True) == 3
        assert not await bus.client.exists(bus.stream(stream)), "the emptied stream of a dead node is gone"
    finally:
        await bus.close()


class HintRecorder:
    """An mt stage that only records the hints it is given."""

    kind = "mt"

    def __init__(self) -> None:
        self.hints: list[WarmUp] = []

    def load(self) -> None:
        pass

    def process(self, message: Message) -> Sequence[Message]:
        if isinstance(message, WarmUp):
            self.hints.append(message)
        return []


async def test_a_warm_up_hint_reaches_every_mt_worker(bus: Bus) -> None:
    stages = [HintRecorder() for _ in range(3)]
    workers = [Worker(stage, bus, FAST, consumer=f"mt-{i}") for i, stage in enumerate(stages)]
    serving = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await asyncio.sleep(1.0)  # each follows the hints from the newest entry at its start
        hint = WarmUp(room="r", speaker="ana", seq=0, pairs=(("en", "es"),))
        await bus.publish(hint)
        await eventually(lambda: all(stage.hints for stage in stages), "the hint at every worker")
    finally:
        for worker in workers:
            worker.stop()
        await cancel_and_wait(serving)
    assert [[h.pairs for h in stage.hints] for stage in stages] == [[(("en", "es"),)]] * 3
    assert await bus.client.xlen(bus.stream(WARM_UP)) == 1


REFUSALS = {
    # case: (the server's settings, the worker's password, the fix an operator makes, what the log must say)
    "wrong password": (["--requirepass", "right"], "wrong", {"requirepass": "wrong"}, "refused the password"),
    "no password": (["--requirepass", "right"], "", {"protected-mode": "no", "requirepass": ""}, "requires a password"),
    "protected mode": (["--protected-mode", "yes"], "", {"protected-mode": "no"}, "protected mode"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_worker_that_redis_refuses_says_why_and_retries(
    case: str, media_namespace: str, stream_prefix: str, tmp_path: Path
) -> None:
    settings, password, fix, said = REFUSALS[case]
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", f"127.0.0.1 {netns.TEST_ADDRESS}", "--save", "",
         "--appendonly", "no", *settings],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    admin = redis.Redis(port=port, password="right" if "--requirepass" in settings else None)
    log_path = tmp_path / "worker.log"
    worker = None
    try:
        _wait_for(admin.ping)
        # Protected mode refuses only other hosts: the worker comes in by the namespace's address.
        url = (
            f"redis://:{password}@{netns.TEST_ADDRESS}:{port}/0"
            if password
            else f"redis://{netns.TEST_ADDRESS}:{port}/0"
        )
        env = {**os.environ, "REDIS_URL": url, "BABELROOM_STREAM_PREFIX": stream_prefix, "PYTHONPATH": str(ROOT)}
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "tests.runtime_stage"], env=env, stdout=log, stderr=log)
        _wait_for(lambda: said in log_path.read_text() or None, what=f"the worker to log {said!r}")
        assert worker.poll() is None, f"the worker exited: {log_path.read_text()[-2000:]}"
        for setting, value in fix.items():  # the operator fixes it; the worker gets in by itself
            admin.config_set(setting, value)
        admin = redis.Redis(port=port, password=fix.get("requirepass", "right") or None)
        admin.xadd(f"{stream_prefix}:asr", {b"m": encode(segment("node-a", 0))})
        _wait_for(lambda: admin.xlen(f"{stream_prefix}:mt") or None, what="the worker to process a segment")
    finally:
        for process in (worker, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    raise
    text = log_path.read_text()
    print(next(line for line in text.splitlines() if said in line))
    assert "Traceback" not in text, text[-3000:]


def _wait_for(check: Callable[[], object], what: str = "redis-server", timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
