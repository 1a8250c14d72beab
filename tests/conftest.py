"""Fixtures shared by the suite: a network namespace of the suite's own, a real redis-server and a real
Janus on free ports.

The whole test session runs in a network namespace it makes at start (babelroom/netns.py): Janus
gathers no ICE candidates on loopback, so media between Janus, aiortc and the browsers flows over a
veth pair carrying 198.18.0.1, and no test traffic can reach any other host."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from babelroom import janus, netns
from babelroom.supervisor import free_port, redis_argv, wait_for_redis
from pipeline.bus import Bus
from pipeline.config import BusOptions

NAMESPACE_PROBLEM: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if netns.inside():
        return
    try:
        netns.enter()
    except netns.NamespaceError as exc:
        NAMESPACE_PROBLEM.append(str(exc))


@pytest.fixture(scope="session")
def media_namespace() -> str:
    """The address media tests use; fails clearly where no namespace could be made."""
    if NAMESPACE_PROBLEM:
        pytest.fail(NAMESPACE_PROBLEM[0])
    return netns.TEST_ADDRESS


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A real redis-server on a free port, its files in `folder`, until the block ends; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(redis_argv(port, str(folder)), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, timeout_s=10)
    except SystemExit as exc:
        proc.kill()
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; tests isolate themselves with their own prefix."""
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def janus_config(media_namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[janus.JanusConfig]:
    """A real Janus for the whole session, gathering candidates on the namespace's test interface only."""
    folder = tmp_path_factory.mktemp("janus")
    config = janus.JanusConfig.fresh(free_port(), ice_enforce_list=netns.TEST_INTERFACE)
    janus.write_config(folder, config)
    log = open(folder / "janus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(janus.janus_argv(folder), stdout=log, stderr=subprocess.STDOUT)
    try:
        janus.wait_for_janus(config, timeout_s=10)
    except SystemExit as exc:
        proc.kill()
        pytest.fail(f"{exc}; see {folder / 'janus.log'}")
    yield config
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


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
def service_settings() -> dict[str, str]:
    """Settings the `service` fixture adds to its processes' environment: a test module overrides this fixture."""
    return {}


@pytest.fixture
def service(
    redis_url: str,
    janus_config: janus.JanusConfig,
    stream_prefix: str,
    tmp_path: Path,
    service_settings: dict[str, str],
) -> Iterator[str]:
    """The gateway and one real asr, mt and tts worker, as processes on this test's streams; yields the URL."""
    from tests.browser import gateway_command, processes, service_env, wait_ready, worker_commands

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(redis_url, stream_prefix, {**janus.gateway_env(janus_config), **service_settings})
    with processes([gateway_command(port), *worker_commands()], env, tmp_path) as procs:
        wait_ready(base_url, procs)
        yield base_url
