"""`babelroom up` (what `make up` runs): the URL, /healthz with real workers alive, a clean stop that
leaves neither processes nor its Redis data dir behind; `babelroom janus` (compose's Janus) likewise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from babelroom import coturn, janus, netns
from babelroom.certificate import ensure_certificate
from babelroom.janus import JanusConfig, wait_for_janus
from babelroom.supervisor import free_port
from pipeline.routes import WORKER_KINDS

ROOT = Path(__file__).resolve().parents[1]
COLD_START_LIMIT_S = 180


def children_of(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except OSError:
        return 0, {}


def https_answers(url: str, cert: Path) -> int:
    """The status of `url`, trusting only `cert`: the name or address must be one it was made for."""
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return int(reply.status)


@pytest.mark.slow
def test_up_prints_the_url_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    """Plain `up`, with --https and --turn on top: HTTP on localhost as always, HTTPS with the certificate it
    made for this host (here the namespace's veth address), coturn among its children."""
    port, https_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"TMPDIR": str(tmp_path)}
    env |= {"BABELROOM_TLS_DIR": str(tmp_path / "tls"), "BABELROOM_HTTPS_PORT": str(https_port)}
    started = time.monotonic()
    descendants: set[int] = set()
    up = subprocess.Popen(
        [sys.executable, "-m", "babelroom.cli", "up", "--port", str(port), "--https", "--turn"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        printed = [up.stdout.readline() for _ in range(4)]
        assert printed[0].startswith("HTTPS certificate (made, self-signed)"), printed
        fingerprint = printed[1].split(": ")[1].strip()
        assert f"http://localhost:{port}/room/" in printed[2]
        link = printed[3].split(": ", 1)[1].strip()
        assert link == f"https://{netns.TEST_ADDRESS}:{https_port}/room/demo", printed
        status, body = 0, {}
        while time.monotonic() - started < COLD_START_LIMIT_S:
            status, body = health(port)
            workers = body.get("workers", {})
            if status == 200 and all(workers.get(kind, 0) >= 1 for kind in WORKER_KINDS):  # type: ignore[union-attr]
                break
            time.sleep(0.5)
        cold_start_s = time.monotonic() - started
        print(f"cold_start_s={cold_start_s:.1f} health={body}")
        assert status == 200 and body.get("status") == "ok", body
        descendants = children_of(up.pid)
        assert len(descendants) >= 8  # redis, coturn, janus, gateway, asr, mt, tts, lipsync (plus helpers)
        [data_dir] = tmp_path.glob("babelroom-redis-*")
        assert list(data_dir.glob("appendonlydir/*.aof")), "the private Redis keeps an append-only file"
        [janus_dir] = tmp_path.glob("babelroom-janus-*")
        assert (janus_dir / "janus.jcfg").is_file(), "the private Janus's configuration lives in its own folder"
        jcfg = (janus_dir / "janus.jcfg").read_text()
        assert 'turn_rest_api = "http://127.0.0.1:' in jcfg and "turn_pwd" not in jcfg, "a TURN API, no password"
        cert = tmp_path / "tls" / "cert.pem"
        assert https_answers(link, cert) == 200
        assert https_answers(f"https://localhost:{https_port}/healthz", cert) == 200
        assert fingerprint == ensure_certificate(tmp_path / "tls", [], []).fingerprint
        assert any("turnserver" in Path(f"/proc/{pid}/cmdline").read_text() for pid in descendants if alive(pid))
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in descendants if alive(pid)], "babelroom up left processes behind"
    assert list(tmp_path.glob("babelroom-*")) == [], "babelroom up left its Redis or Janus folder behind"


async def janus_session_with(url: str, apisecret: str) -> dict[str, Any]:
    """Janus's answer to creating a session with `apisecret`."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("janus-protocol",)) as socket:
        await socket.send_json({"janus": "create", "transaction": "t1", "apisecret": apisecret})
        while True:
            reply: dict[str, Any] = await socket.receive_json(timeout=10)
            if reply.get("transaction") == "t1" and reply.get("janus") != "ack":
                return reply


@pytest.mark.slow
def test_janus_command_serves_the_given_secret_and_leaves_no_folder(tmp_path: Path) -> None:
    """`babelroom janus` (compose's Janus service): Janus takes the gateway's API secret; SIGTERM stops it and
    removes the folder where its configuration held the secrets."""
    port = free_port()
    secrets = {"BABELROOM_JANUS_API_SECRET": "given-secret", "BABELROOM_JANUS_ADMIN_KEY": "given-admin-key"}
    env = dict(os.environ) | secrets | {"TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "babelroom.cli", "janus", "--ws-port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    janus_pids: set[int] = set()
    try:
        wait_for_janus(JanusConfig(port, "", ""))
        janus_pids = children_of(process.pid)
        assert janus_pids, "Janus runs as the command's child"
        url = f"ws://127.0.0.1:{port}"
        assert asyncio.run(janus_session_with(url, "given-secret"))["janus"] == "success"
        assert asyncio.run(janus_session_with(url, "another-secret"))["janus"] == "error"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not [pid for pid in janus_pids if alive(pid)], "Janus outlived babelroom janus"
    assert list(tmp_path.glob("babelroom-janus-*")) == [], "the folder with Janus's secrets was left behind"


@pytest.mark.slow
def test_turn_command_runs_coturn_with_the_shared_secret_and_leaves_no_folder(tmp_path: Path) -> None:
    """`babelroom turn` (compose's coturn): refuses to start without the secret; with it, coturn listens on
    3478 with its configuration in a private folder, which goes when SIGTERM stops it."""
    env = dict(os.environ) | {"TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "babelroom.cli", "turn", "--relay-to", netns.TEST_ADDRESS]
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "set BABELROOM_TURN_SECRET" in refused.stderr
    process = subprocess.Popen(command, cwd=ROOT, env=env | {"BABELROOM_TURN_SECRET": "s3cret"})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", coturn.TURN_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "coturn did not listen on 3478"
                time.sleep(0.1)
        [folder] = tmp_path.glob("babelroom-coturn-*")
        config = (folder / "turnserver.conf").read_text()
        assert "static-auth-secret=s3cret" in config and f"allowed-peer-ip={netns.TEST_ADDRESS}" in config
        assert (folder / "turnserver.conf").stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM, "coturn ends by the signal, as the shell reports it"
    finally:
        if process.poll() is None:
            process.kill()
    assert list(tmp_path.glob("babelroom-coturn-*")) == [], "the folder with the TURN secret was left behind"


def test_janus_runs_with_two_heaps_unless_told_otherwise() -> None:
    """A thread per session and handle, each with a glibc heap of its own, fragmented over a meeting."""
    assert janus.janus_env({"PATH": "/bin"}) == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert janus.janus_env({"MALLOC_ARENA_MAX": "4"})["MALLOC_ARENA_MAX"] == "4", "the operator's setting stands"
