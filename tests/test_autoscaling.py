"""The autoscaling logic of deploy/k8s, measured on a real redis-server (7.x) with the real worker runtime.

KEDA cannot run here, so this test reads what KEDA's redis-streams scaler reads, as it reads it (KEDA v2.20.2,
pkg/scalers/redis_streams_scaler.go, lag mode): XINFO GROUPS on the trigger's stream, the lag of the trigger's
consumer group; XLEN when the group does not exist yet (no worker has started: scaling from zero); 0 when the
stream does not exist. A lag Redis cannot compute (nil) would read as 0 to KEDA's client, so it must never be
nil here. Desired replicas are then what the HPA computes for KEDA's AverageValue target: ceil(lag / lagCount),
within minReplicaCount..maxReplicaCount; a kind with two triggers takes the larger.

The stream and group names, thresholds and bounds are read from the rendered GPU and CPU overlays; the segments are
published by the code's own routes (pipeline/routes.py), so a stream renamed on either side breaks the test.
The worker is the real runtime (workers/base.py) with a stage that answers at once: a stand-in for the model,
which the lag does not depend on (it counts entries no worker has read yet).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from redis.exceptions import ResponseError

from pipeline.bus import Bus
from pipeline.config import STREAM_PREFIX, BusOptions, WorkerOptions
from pipeline.messages import Message, SynthesizedSpeech
from pipeline.routes import ROUTES, destinations
from tests.conftest import private_redis
from tests.kube import OVERLAYS, render
from workers.base import Worker

FAST = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, concurrency=4)
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Trigger:
    stream: str
    group: str
    lag_count: int
    activation_lag_count: int


@dataclass(frozen=True)
class Scaling:
    kind: str
    min_replicas: int
    max_replicas: int
    triggers: tuple[Trigger, ...]

    def desired(self, lags: Sequence[int]) -> int:
        wanted = max(math.ceil(lag / t.lag_count) for lag, t in zip(lags, self.triggers, strict=True))
        return min(self.max_replicas, max(self.min_replicas, wanted))


def scalings(overlay: str) -> list[Scaling]:
    found = []
    for obj in render(overlay):
        if obj["kind"] != "ScaledObject":
            continue
        spec = obj["spec"]
        triggers = tuple(
            Trigger(m["stream"], m["consumerGroup"], int(m["lagCount"]), int(m["activationLagCount"]))
            for m in (t["metadata"] for t in spec["triggers"])
        )
        found.append(Scaling(obj["metadata"]["name"], spec["minReplicaCount"], spec["maxReplicaCount"], triggers))
    return found


async def keda_lag(bus: Bus, trigger: Trigger) -> int:
    """The number KEDA's redis-streams scaler reads in lag mode."""
    try:
        groups = await bus.client.xinfo_groups(trigger.stream)
    except ResponseError as exc:
        if "no such key" in str(exc):
            return 0
        raise
    for group in groups:
        if group["name"].decode() == trigger.group:
            assert group["lag"] is not None, f"{trigger.stream}: Redis cannot tell the lag (KEDA would read 0)"
            return int(group["lag"])
    return int(await bus.client.xlen(trigger.stream))


def message_for(stream: str, seq: int) -> Message:
    """A message the code routes to `stream` (a bus stream name without its prefix)."""
    candidates: list[type[Message]] = [*ROUTES, SynthesizedSpeech]
    for cls in candidates:
        extra: dict[str, Any] = {"has_frames": True, "pcm": b"\x00\x00"} if cls is SynthesizedSpeech else {}
        message: Message = cls(room="busy", speaker="ana", seq=seq, **extra)
        if stream in destinations(message):
            return message
    raise AssertionError(f"no message of the code goes to the stream {stream!r}")


class Answers:
    """The stand-in stage: no model, no output; each message acknowledged as a real one is."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0

    def load(self) -> None:
        pass

    def process(self, message: Message) -> Sequence[Message]:
        self.calls += 1
        return []


@pytest.fixture(scope="module")
def redis_7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: the streams keep the manifests' prefix (br), unshared."""
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.split("v=")[1].split(".")[0]) >= 7, f"the lag needs Redis 7: {version}"
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def bus(redis_7: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_7, block_ms=100))
    await bus.client.flushdb()
    yield bus
    await bus.close()


async def publish_burst(bus: Bus, scaling: Scaling, size: int) -> None:
    for trigger in scaling.triggers:
        assert trigger.stream.startswith(f"{STREAM_PREFIX}:")
        stream = trigger.stream.removeprefix(f"{STREAM_PREFIX}:")
        for seq in range(size):
            await bus.publish(message_for(stream, seq))


async def lags(bus: Bus, scaling: Scaling) -> list[int]:
    return [await keda_lag(bus, trigger) for trigger in scaling.triggers]


async def drain(bus: Bus, scaling: Scaling, burst: int) -> tuple[list[int], float]:
    """Run a real worker of the kind until every trigger's lag is 0 and it has processed the burst's finals;
    returns the lags then and the time taken."""
    stage = Answers(scaling.kind)
    worker = Worker(stage, bus, FAST)  # Answers is a Stage by shape
    started = time.monotonic()
    task = asyncio.create_task(worker.run())
    try:
        while time.monotonic() - started < DRAIN_TIMEOUT_S:
            if stage.calls >= burst and not any(await lags(bus, scaling)):
                break
            await asyncio.sleep(0.05)
        return await lags(bus, scaling), time.monotonic() - started
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


@pytest.mark.parametrize("overlay", OVERLAYS)
async def test_a_burst_of_segments_crosses_the_threshold_and_the_drained_stream_brings_it_back(
    bus: Bus, overlay: str
) -> None:
    for scaling in scalings(overlay):
        await bus.client.flushdb()
        # One more entry on each stream than minReplicaCount workers are meant to hold: one replica more.
        burst = max(t.lag_count for t in scaling.triggers) * scaling.min_replicas + 1
        assert await lags(bus, scaling) == [0] * len(scaling.triggers)
        assert scaling.desired([0] * len(scaling.triggers)) == scaling.min_replicas

        # Scaling from zero: segments queue before any worker of the kind has made its group (KEDA: XLEN).
        await publish_burst(bus, scaling, burst)
        cold = await lags(bus, scaling)
        assert cold == [burst] * len(scaling.triggers)
        assert all(lag > t.activation_lag_count for lag, t in zip(cold, scaling.triggers, strict=True))
        assert scaling.desired(cold) == min(scaling.max_replicas, scaling.min_replicas + 1) > scaling.min_replicas
        under, cold_drain_s = await drain(bus, scaling, burst)
        assert under == [0] * len(scaling.triggers), f"{scaling.kind}: not drained in {DRAIN_TIMEOUT_S} s"
        assert scaling.desired(under) == scaling.min_replicas

        # The groups exist now (workers ran, then stopped): KEDA reads XINFO GROUPS lag.
        await publish_burst(bus, scaling, burst)
        warm = await lags(bus, scaling)
        assert warm == [burst] * len(scaling.triggers)
        assert scaling.desired(warm) > scaling.min_replicas
        # What the workers acknowledged leaves the stream (pipeline/bus.py trim, past the retention): the lag stays.
        for trigger in scaling.triggers:
            await bus.trim(trigger.stream.removeprefix(f"{STREAM_PREFIX}:"), now=time.time() + 3600)
        assert await lags(bus, scaling) == warm
        under, warm_drain_s = await drain(bus, scaling, burst)
        assert under == [0] * len(scaling.triggers)
        assert scaling.desired(under) == scaling.min_replicas
        print(
            f"{overlay} {scaling.kind}: {burst} entries on {', '.join(t.stream for t in scaling.triggers)} -> lag "
            f"{warm} (lagCount {[t.lag_count for t in scaling.triggers]}), replicas {scaling.min_replicas} -> "
            f"{scaling.desired(warm)}; drained to lag 0 in {cold_drain_s:.2f} s (no group yet) and "
            f"{warm_drain_s:.2f} s -> {scaling.desired(under)} replica(s)"
        )
