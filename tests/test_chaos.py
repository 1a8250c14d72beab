"""Chaos: real segments flow through the real asr, mt and tts workers (processes under `babelroom up`'s
supervisor, with the durable Redis) while workers are SIGKILLed again and again and Redis is killed
and restarted once. Nothing is lost and nothing is duplicated: every segment's caption, translation
and speech arrive exactly once, or the segment is dead-lettered with its reason. The workers trim their
streams as they go, with no retention: what they acknowledged leaves at once, what is pending stays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from babelroom.supervisor import Child, Supervisor, babelroom_argv, redis_child, wait_for_redis
from pipeline.audio import float_to_pcm16
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import SpeechSegment, StageFailure, SynthesizedSpeech, Transcript, Translation
from pipeline.routes import SPEECH_KINDS, WORKER_KINDS
from tests.speech import espeak, silence

SEGMENTS = 32
FEED_GAP_S = 1.5
WORKER_KILLS = 12
KILL_EVERY_S = 5.0
REDIS_KILL_AT_S = 28.0
CLAIM_IDLE_MS = 1000  # a killed worker's segment is taken over about a second later
TRIM_INTERVAL_S = 0.5  # trimming at its most eager: acknowledged entries leave within half a second
DEADLINE_S = 170.0  # the whole run, feeding and draining
SENTENCES = ("the house is big", "we need a better plan", "thank you for coming", "the train was late")
RESULT_KINDS = (Transcript, Translation, SynthesizedSpeech)


class Chaos:
    def __init__(self, data_dir: Path, prefix: str) -> None:
        env = {**os.environ, "BABELROOM_STREAM_PREFIX": prefix, "BABELROOM_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
               "BABELROOM_RETENTION_S": "0", "BABELROOM_TRIM_INTERVAL_S": str(TRIM_INTERVAL_S)}  # fmt: skip
        self.redis, self.url = redis_child(env, str(data_dir))
        env["REDIS_URL"] = self.url
        self.workers = [Child(f"worker-{kind}", babelroom_argv("worker", kind), env) for kind in WORKER_KINDS]
        self.supervisor = Supervisor([self.redis, *self.workers])
        self.worker_kills = 0
        self.mid_message_kills = 0
        self.redis_kills = 0

    def start(self) -> None:
        self.redis.start()
        wait_for_redis(self.url)
        for worker in self.workers:
            worker.start()

    async def supervise(self) -> None:
        while True:
            self.supervisor.check_children()
            await asyncio.sleep(0.1)

    async def kill_workers(self, bus: Bus) -> None:
        """Every few seconds SIGKILL a worker, each kind in turn: mid-message when it holds a segment."""
        while self.worker_kills < WORKER_KILLS:
            await asyncio.sleep(KILL_EVERY_S)
            victim = self.workers[self.worker_kills % len(self.workers)]
            if victim.process is None or victim.process.poll() is not None:
                continue  # being restarted: try the next kind next time
            with contextlib.suppress(RedisError):
                self.mid_message_kills += victim.process.pid in await busy_pids(bus)
            victim.process.send_signal(signal.SIGKILL)
            self.worker_kills += 1

    async def kill_redis_once(self) -> None:
        await asyncio.sleep(REDIS_KILL_AT_S)
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGKILL)  # the supervisor restarts it on the same data
        self.redis_kills += 1


async def busy_pids(bus: Bus) -> list[int]:
    """Pids of the workers holding a segment now (consumer names end in the worker's pid)."""
    pids = []
    for kind in WORKER_KINDS:
        with contextlib.suppress(RedisError):  # no group yet
            summary = await bus.client.xpending(bus.stream(kind), kind)
            pids += [int(c["name"].decode().rsplit("-", 1)[1]) for c in summary.get("consumers") or []]
    return pids


async def feed(bus: Bus, audio: list[bytes]) -> None:
    """Publish the segments in order, holding each while Redis is away (as the gateway's outbox does)."""
    for seq in range(SEGMENTS):
        pcm = audio[seq % len(audio)]
        segment = SpeechSegment(room="chaos", speaker="ana", seq=seq, language="en", targets=("es",),
                                end_sample=len(pcm) // 2, pcm=pcm).stamped("captured")  # fmt: skip
        while True:
            try:
                await bus.publish(segment.stamped("published"))
                break
            except RedisError:
                await asyncio.sleep(0.2)
        await asyncio.sleep(FEED_GAP_S)


async def outcome(bus: Bus) -> tuple[Counter[tuple[str, int]], dict[int, str]]:
    """Results per (kind, seq), and the dead letters' reasons per seq."""
    results: Counter[tuple[str, int]] = Counter()
    for delivery in await bus.tail("results", "0-0", count=100_000):
        if isinstance(delivery.message, RESULT_KINDS):
            results[(type(delivery.message).__name__, delivery.message.seq)] += 1
    dead = {
        d.message.seq: f"{d.message.stage}: {d.message.error}"
        for d in await bus.tail("dead", "0-0", count=100_000)
        if isinstance(d.message, StageFailure)
    }
    return results, dead


async def stream_lengths(bus: Bus) -> dict[str, tuple[int, int]]:
    """Per speech stage: (entries ever added to its stream, entries it holds now)."""
    lengths = {}
    for kind in SPEECH_KINDS:
        info = await bus.client.xinfo_stream(bus.stream(kind))
        lengths[kind] = (int(info["entries-added"]), int(info["length"]))
    return lengths


def delivered(results: Counter[tuple[str, int]], seq: int) -> bool:
    return results[("SynthesizedSpeech", seq)] > 0


@pytest.mark.slow
async def test_workers_and_redis_killed_lose_nothing_and_duplicate_nothing(tmp_path: Path, stream_prefix: str) -> None:
    audio = [float_to_pcm16([*silence(0.1), *espeak(text), *silence(0.1)]) for text in SENTENCES]
    chaos = Chaos(tmp_path, stream_prefix)
    chaos.start()
    bus = Bus.connect(BusOptions(redis_url=chaos.url, prefix=stream_prefix))
    started = time.monotonic()
    tasks = [
        asyncio.create_task(chaos.supervise()),
        asyncio.create_task(chaos.kill_workers(bus)),
        asyncio.create_task(chaos.kill_redis_once()),
    ]
    try:
        await feed(bus, audio)
        results: Counter[tuple[str, int]] = Counter()
        dead: dict[int, str] = {}
        while time.monotonic() - started < DEADLINE_S:
            with contextlib.suppress(RedisError):
                results, dead = await outcome(bus)
            if chaos.worker_kills >= WORKER_KILLS and all(delivered(results, s) or s in dead for s in range(SEGMENTS)):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2 * TRIM_INTERVAL_S)  # the last acknowledgements' sweep
        lengths = await stream_lengths(bus)
    finally:
        for task in tasks:
            task.cancel()
        await bus.close()
        chaos.supervisor.stop_all()
    lost = [s for s in range(SEGMENTS) if not delivered(results, s) and s not in dead]
    duplicated = {key: n for key, n in results.items() if n > 1}
    figures = {
        "segments": SEGMENTS,
        "worker_kills": chaos.worker_kills,
        "mid_message_kills": chaos.mid_message_kills,
        "restarts": {c.name: len(c.history) for c in chaos.supervisor.children},
        "redis_kills": chaos.redis_kills,
        "delivered": sum(delivered(results, s) for s in range(SEGMENTS)),
        "dead_lettered": dead,
        "lost": lost,
        "duplicated": len(duplicated),
        "stream_entries_added_and_left": lengths,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("chaos figures: " + json.dumps(figures))
    assert chaos.worker_kills >= 10 and chaos.redis_kills == 1
    assert chaos.redis.history == [-signal.SIGKILL]
    assert lost == [] and duplicated == {}, figures
    assert all(left < added for added, left in lengths.values()), figures  # trimming was on
    for seq in range(SEGMENTS):  # each delivered segment: one caption, one translation, one speech
        if delivered(results, seq):
            assert [results[(kind.__name__, seq)] for kind in RESULT_KINDS] == [1, 1, 1], seq
