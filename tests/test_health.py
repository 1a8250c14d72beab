"""`babelroom health`, the containers' healthchecks, against the real parts: a worker is ready only once its model
is loaded, Janus answers a ping, the gateway is ready once it reaches Janus; each says why when it is not."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from babelroom.cli import main
from babelroom.health import gateway_problem, janus_problem, worker_problem
from babelroom.janus import JanusConfig
from babelroom.supervisor import free_port
from gateway.options import GatewayOptions, JanusOptions
from gateway.web.app import create_app
from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from tests.runtime_stage import LengthStage
from tests.test_worker import start_worker_process
from workers.base import Worker

FAST = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0)
HOST = socket.gethostname()


class SlowLoadingStage(LengthStage):
    """An ASR stage whose model loads when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = threading.Event()

    def load(self) -> None:
        self.loaded.wait(timeout=30)


async def until_ready(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (problem := await check()) is not None:  # type: ignore[operator]
        assert time.monotonic() < deadline, problem
        await asyncio.sleep(0.1)


async def test_a_worker_is_ready_once_its_model_is_loaded_and_no_longer_once_it_stops(bus: Bus) -> None:
    stage = SlowLoadingStage()
    worker = Worker(stage, bus, FAST, consumer=f"{HOST}-4242")
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)
    loading = await worker_problem(bus, HOST, "asr")
    assert loading is not None and "no asr on" in loading and "loading its model" in loading

    stage.loaded.set()
    await until_ready(lambda: worker_problem(bus, HOST, "asr"))
    assert await worker_problem(bus, HOST, None) is None, "any kind"
    assert await worker_problem(bus, HOST, "mt") is not None, "only this kind"
    assert await worker_problem(bus, "another-host", "asr") is not None, "only this host's workers"

    worker.stop()
    await running
    assert await worker_problem(bus, HOST, "asr") is not None


async def test_a_worker_check_without_redis_says_so() -> None:
    bus = Bus.connect(BusOptions(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        problem = await worker_problem(bus, HOST, "asr")
    finally:
        await bus.close()
    assert problem is not None and problem.startswith("Redis: ")


def test_the_command_exits_0_for_a_running_worker_process_and_1_once_it_stopped(
    redis_url: str, stream_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BABELROOM_STREAM_PREFIX", stream_prefix)
    assert main(["health", "worker", "asr"]) == 1
    assert "no asr on" in capsys.readouterr().err
    process = start_worker_process(redis_url, stream_prefix, "ok")
    try:
        deadline = time.monotonic() + 20
        while main(["health", "worker", "asr"]) != 0:
            assert time.monotonic() < deadline, capsys.readouterr().err
            time.sleep(0.2)
        assert "babelroom health worker: ready" in capsys.readouterr().out
        assert main(["health", "worker", "mt"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert main(["health", "worker"]) == 1, "the worker's heartbeat goes with it"


async def test_janus_answers_a_ping_and_a_closed_port_does_not(janus_config: JanusConfig) -> None:
    assert await janus_problem(janus_config.url) is None
    closed = f"ws://127.0.0.1:{free_port()}"
    problem = await janus_problem(closed, timeout_s=2)
    assert problem is not None and problem.startswith(closed)


@pytest.fixture
async def gateway_url(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> AsyncIterator[str]:
    janus = JanusOptions(janus_config.url, janus_config.api_secret, janus_config.admin_key)
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    async with TestServer(create_app(bus, GatewayOptions(token_secret="s", janus=janus)), host="127.0.0.1") as server:
        yield str(server.make_url("/healthz"))


async def test_the_gateway_is_ready_once_it_reaches_janus(gateway_url: str) -> None:
    await until_ready(lambda: gateway_problem(gateway_url))
    problem = await gateway_problem(gateway_url.replace("/healthz", "/nowhere"))
    assert problem is not None and "HTTP 404" in problem


async def test_a_gateway_without_janus_or_without_redis_is_not_ready(redis_url: str) -> None:
    no_janus = JanusOptions(f"ws://127.0.0.1:{free_port()}", "secret", "key")
    for redis, why in ((redis_url, "Janus is unavailable"), (f"redis://127.0.0.1:{free_port()}/0", "HTTP 503")):
        app = create_app(Bus.connect(BusOptions(redis_url=redis)), GatewayOptions(token_secret="s", janus=no_janus))
        async with TestServer(app, host="127.0.0.1") as server:
            problem = await gateway_problem(str(server.make_url("/healthz")))
        assert problem is not None and why in problem
