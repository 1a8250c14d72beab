"""Janus's own TURN credential is short-lived and renewed (issue 28): a real Janus, configured as `babelroom up`
configures it, asks the TurnApi beside it for a fresh credential when a participant's PeerConnection is set up,
and a real coturn accepts that credential for Janus's own relayed candidates. Before, Janus was handed one
static credential for 30 days in its configuration file."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from babelroom import coturn, janus, netns
from babelroom.supervisor import free_port
from gateway.options import TurnOptions
from tests.speech import silence
from tests.test_gateway import SpeechTrack, join, own_server

pytestmark = pytest.mark.slow

RELAY_PORTS = (50_200, 50_299)


@pytest.fixture
def turn_server(media_namespace: str, tmp_path: Path) -> Iterator[tuple[TurnOptions, Path]]:
    """coturn on the namespace's veth address, logging each allocation."""
    config = coturn.CoturnConfig(
        listen_ip=media_namespace, port=free_port(), relay_ip=media_namespace,
        allowed_peers=(media_namespace,), relay_ports=RELAY_PORTS,
    )  # fmt: skip
    log = tmp_path / "coturn.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(coturn.coturn_argv(coturn.write_config(tmp_path, config)), stdout=out, stderr=out)
        try:
            yield TurnOptions(tuple(config.urls(media_namespace)[:1]), config.secret), log
        finally:
            server.terminate()
            server.wait(timeout=10)


async def test_janus_gets_a_fresh_short_lived_turn_credential_for_each_peer_connection_and_coturn_takes_it(
    turn_server: tuple[TurnOptions, Path], redis_url: str, stream_prefix: str, tmp_path: Path
) -> None:
    turn, turn_log = turn_server
    with janus.TurnApi.serving(turn) as api:
        assert api is not None
        config = janus.JanusConfig.fresh(free_port(), ice_enforce_list=netns.TEST_INTERFACE, turn=api.janus)
        janus.write_config(tmp_path / "janus", config)
        with open(tmp_path / "janus.log", "wb") as out:
            process = subprocess.Popen(janus.janus_argv(tmp_path / "janus"), stdout=out, stderr=subprocess.STDOUT)
            try:
                janus.wait_for_janus(config)
                asked_before = time.time()
                async with own_server(redis_url, stream_prefix, config) as (server, _):
                    ana = await join(server, "Ana", "en", "en", SpeechTrack(silence(30)))
                    try:
                        allocations = await janus_allocations(turn_log, timeout_s=20)
                    finally:
                        await ana.close()
            finally:
                process.terminate()
                process.wait(timeout=10)
        issued = api.issued
    print(f"credentials issued to Janus: {issued}; coturn: {allocations[0].strip()}")
    assert issued >= 1, "Janus never asked for a credential"
    expiry = re.search(r"user <(\d+):janus-\d+>", allocations[0])
    assert expiry is not None, allocations[0]
    assert asked_before < int(expiry.group(1)) <= asked_before + janus.JANUS_TURN_TTL_S + 5, "hours, not 30 days"


async def janus_allocations(log: Path, timeout_s: float) -> list[str]:
    """coturn's lines for successful allocations by a user named janus-<handle>, once there is one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = [line for line in text.splitlines() if "janus-" in line and "ALLOCATE" in line and "success" in line]
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"coturn saw no allocation by Janus:\n{log.read_text(errors='replace')[-3000:]}")
