"""`babelroom node`, `nodes`, `drain` and `workers` as an operator runs them, against a real Redis: a node reports
itself, serves joins, drains on `babelroom drain` and on SIGTERM (its room goes on through the grace, then its page
is sent away), stops its own Janus and leaves nothing behind; `workers` runs the kinds it is given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from babelroom import netns
from babelroom.cli import main
from babelroom.supervisor import free_port
from tests.test_up import alive, children_of

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 4.0
START_S = 60.0


def post_join(url: str, room: str, name: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"name": name, "speak": "en", "hear": "es"}).encode()
    request = urllib.request.Request(f"{url}/api/rooms/{room}/join", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answer_if_ok(reply: tuple[int, dict[str, Any]]) -> dict[str, Any] | None:
    return reply[1] if reply[0] == 200 else None


def listed(capsys: pytest.CaptureFixture[str], redis_url: str) -> dict[str, dict[str, Any]]:
    assert main(["nodes", "--redis", redis_url, "--json"]) == 0
    return {n["id"]: n for n in map(json.loads, capsys.readouterr().out.splitlines())}


def until(check: Any, what: str, timeout_s: float = START_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_node_reports_drains_and_stops_its_janus(
    redis_url: str, stream_prefix: str, media_namespace: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("BABELROOM_STREAM_PREFIX", stream_prefix)
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "BABELROOM_OPEN_ROOMS": "1", "BABELROOM_NODE_MAX_LOAD": "0",
           "BABELROOM_DRAIN_GRACE_S": str(GRACE_S), "BABELROOM_JANUS_ICE_INTERFACES": netns.TEST_INTERFACE}  # fmt: skip
    env.pop("REDIS_URL", None)
    command = ["node", "--redis", redis_url, "--port", str(port), "--public-host", media_namespace, "--node-id", "n1"]
    node = subprocess.Popen([sys.executable, "-m", "babelroom.cli", *command], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://{media_namespace}:{port}"
    descendants: set[int] = set()
    try:
        assert node.stdout is not None
        assert node.stdout.readline().strip() == f"Media node n1 is starting: {url}"
        until(lambda: listed(capsys, redis_url).get("n1", {}).get("state") == "serving", "n1 to report")
        joined = until(lambda: answer_if_ok(post_join(url, "stays", "Ana")), "a join (once its Janus is up)")
        assert joined["node"] == {"id": "n1", "url": url}
        descendants = children_of(node.pid)
        assert main(["nodes", "--redis", redis_url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["NODE", "STATE", "ROOMS", "PARTICIPANTS", "LOAD", "SEEN", "URL"]
        assert table[1].split()[:2] == ["n1", "serving"] and table[1].endswith(url)

        assert main(["drain", "n1", "--redis", redis_url]) == 0
        assert main(["drain", "nobody", "--redis", redis_url]) == 1
        assert "no node 'nobody' is known" in capsys.readouterr().err
        until(lambda: listed(capsys, redis_url)["n1"]["state"] == "draining", "n1 to drain", 10)
        assert post_join(url, "new", "Bea")[0] == 503, "a draining node takes no new room"
        assert post_join(url, "stays", "Bea")[0] == 200, "its rooms go on"

        node.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(GRACE_S / 2)
        assert node.poll() is None, "the node waits for its room through the grace"
        assert post_join(url, "stays", "Cai")[0] == 200
        assert node.wait(timeout=GRACE_S + 40) == 0
        stopped_s = time.monotonic() - signalled
    finally:
        if node.poll() is None:
            node.kill()
    assert GRACE_S <= stopped_s < GRACE_S + 30
    assert listed(capsys, redis_url)["n1"]["state"] == "stopped"
    print(f"stopped {stopped_s:.1f} s after SIGTERM (grace {GRACE_S} s)")
    assert until(lambda: not any(alive(pid) for pid in descendants), "its Janus to stop", 10)
    assert list(tmp_path.glob("babelroom-janus-*")) == [], "its Janus folder is gone"


@pytest.mark.slow
def test_workers_runs_the_kinds_it_is_given(redis_url: str, stream_prefix: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "BABELROOM_STREAM_PREFIX": stream_prefix}
    workers = subprocess.Popen(
        [sys.executable, "-m", "babelroom.cli", "workers", "--kinds", "mt,tts"], cwd=ROOT, env=env
    )
    client = redis.Redis.from_url(redis_url)
    try:

        def kinds_beating() -> list[str]:
            return sorted(key.decode().split(":")[2] for key in client.keys(f"{stream_prefix}:hb:*"))

        beating = until(lambda: kinds_beating() if len(kinds_beating()) == 2 else None, "two heartbeats")
        descendants = children_of(workers.pid)
    finally:
        workers.send_signal(signal.SIGTERM)
        code = workers.wait(timeout=60)
    assert beating == ["mt", "tts"]
    assert code == 0
    assert until(lambda: not any(alive(pid) for pid in descendants), "the workers to stop", 10)
    assert client.keys(f"{stream_prefix}:hb:*") == [], "each said goodbye"
