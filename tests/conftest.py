"""Fixtures shared by the suite: a real redis-server of the test's own on a free port."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from babelroom.supervisor import free_port, redis_argv, wait_for_redis
from pipeline.bus import Bus
from pipeline.config import BusOptions


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; tests isolate themselves with their own prefix."""
    port = free_port()
    proc = subprocess.Popen(redis_argv(port, str(tmp_path_factory.mktemp("redis"))), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, timeout_s=10)
    except SystemExit as exc:
        proc.kill()
        pytest.fail(str(exc))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def stream_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of this test's own, so tests sharing the redis-server never see each other's streams."""
    return f"t{abs(hash(request.node.nodeid)) % 10**10}"


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    """A bus on this test's own streams, with the default options."""
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    yield bus
    await bus.close()


@pytest.fixture
def service(redis_url: str, stream_prefix: str, tmp_path: Path) -> Iterator[str]:
    """The gateway and one real asr, mt and tts worker, as processes on this test's streams; yields the URL."""
    from tests.browser import gateway_command, processes, service_env, wait_ready, worker_commands

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with processes(
        [gateway_command(port), *worker_commands()], service_env(redis_url, stream_prefix), tmp_path
    ) as procs:
        wait_ready(base_url, procs)
        yield base_url
