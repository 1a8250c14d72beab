"""`babelroom up`: the whole service on one machine; `babelroom node` and `babelroom workers`: its parts on many.

Starts a private redis-server on a free port when REDIS_URL is unset (durable: an append-only file in
its own data dir, so a Redis that crashes and is restarted keeps its queues), then the gateway and one
worker of each kind as child processes. A child that dies is restarted after a short backoff (Redis
with the same port and data dir); Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a
grace period), removes the data dir and leaves no process behind. Children also get SIGTERM from the
kernel should this supervisor itself be killed (PR_SET_PDEATHSIG).

`up`'s gateway is a media node of its own Redis (id: the host name), stopped at once. `babelroom node` runs one
media node (its Janus and its gateway) against a shared Redis; on SIGTERM its gateway drains first while Janus still
serves the rooms. `babelroom workers` runs one worker per kind against it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis

from babelroom import coturn, janus
from babelroom.certificate import host_addresses
from gateway.options import GatewayOptions, NodeOptions
from pipeline.routes import WORKER_KINDS

log = logging.getLogger("babelroom.up")

# Waits before restarting a child after its 1st, 2nd, ... consecutive crash: capped at a few seconds,
# since a stage that is down stops every room; a crash loop then costs a process start every 3 s.
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 3.0)
HEALTHY_AFTER_S = 10.0  # a child that ran this long without dying starts its backoff afresh
STOP_GRACE_S = 35.0  # a little over the workers' drain timeout
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)

    def start(self) -> None:
        # Children log to stderr; stdout stays for what `up` prints (the room URL). Each runs in its own
        # process group, so a Ctrl-C reaches the supervisor only, which stops them in order (Redis last).
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=sys.stderr, preexec_fn=_die_with_parent, process_group=0
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.process.pid)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


AOF_REWRITE_PERCENTAGE = "100"
AOF_REWRITE_MIN_SIZE = "8mb"


def redis_argv(port: int, workdir: str) -> list[str]:
    """A private redis-server on loopback (the embedded default, and the tests'), durable: every write
    goes to an append-only file in `workdir` before it is acknowledged, fsynced once a second, so a
    Redis restarted on the same `workdir` finds its streams, groups and pending entries again."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not installed: run `make up` (it installs it) or `apt-get install redis-server`"
        )
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": workdir,
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",  # no RDB snapshots: the append-only file is the one copy
        # Rewrite the file once it doubles past a few MB: it then stays near the live data (the work in flight,
        # trimmed as it is done) instead of keeping every entry ever written, audio included.
        "auto-aof-rewrite-percentage": AOF_REWRITE_PERCENTAGE,
        "auto-aof-rewrite-min-size": AOF_REWRITE_MIN_SIZE,
    }
    return [binary, *(arg for key, value in options.items() for arg in (f"--{key}", value)), "--loglevel", "warning"]


def redis_child(env: dict[str, str], data_dir: str) -> tuple[Child, str]:
    port = free_port()
    return Child("redis", redis_argv(port, data_dir), env), f"redis://127.0.0.1:{port}/0"


def wait_for_redis(url: str, timeout_s: float = 15.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit(f"redis at {url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.1)


class Supervisor:
    def __init__(self, children: list[Child], first: str = "", first_grace_s: float = STOP_GRACE_S) -> None:
        """`first`: the child stopped before the others, given `first_grace_s` (a media node's gateway drains
        while its Janus still serves the rooms)."""
        self.children = children
        self.first = first
        self.first_grace_s = first_grace_s
        self.stopping = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> None:
        for child in self.children:
            if child.process is None:
                child.start()
        while not self.stopping:
            self.check_children()
            time.sleep(POLL_S)

    def check_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            if now - child.started_at > HEALTHY_AFTER_S:
                child.failures = 0
            delay = RESTART_BACKOFF_S[min(child.failures, len(RESTART_BACKOFF_S) - 1)]
            child.failures += 1
            child.history.append(code)
            child.restart_at = now + delay
            log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)

    def stop_all(self) -> None:
        first = [c.process for c in self.children if c.name == self.first and c.process and c.process.poll() is None]
        for proc in first:
            proc.send_signal(signal.SIGTERM)
        _wait_all(first, self.first_grace_s)
        running = [c.process for c in reversed(self.children) if c.process and c.process.poll() is None]
        redis_proc = next((c.process for c in self.children if c.name == "redis"), None)
        others = [p for p in running if p is not redis_proc]
        for proc in others:
            proc.send_signal(signal.SIGTERM)
        _wait_all(others, STOP_GRACE_S)
        if redis_proc is not None and redis_proc.poll() is None:  # last, so workers can drain into it
            redis_proc.send_signal(signal.SIGTERM)
            _wait_all([redis_proc], 10.0)
        log.info("stopped")


def _wait_all(processes: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", proc.pid, grace_s)
            proc.kill()
            proc.wait()


def babelroom_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "babelroom.cli", *args]


def janus_command(folder: Path, config: janus.JanusConfig) -> list[str]:
    """Janus's command line, its configuration written into `folder`; exits with the hint when it is missing."""
    try:
        janus.write_config(folder, config)
        return janus.janus_argv(folder)
    except janus.JanusNotInstalled as exc:
        raise SystemExit(str(exc)) from None


def janus_child(env: dict[str, str], folder: Path) -> tuple[Child, janus.JanusConfig]:
    """A private Janus: the API on loopback, fresh secrets, the configuration written into `folder`."""
    config = janus.config_from_env(env, free_port())
    return Child("janus", janus_command(folder, config), janus.janus_env(env)), config


def run_janus(config: janus.JanusConfig) -> int:
    """Janus in the foreground (`babelroom janus`, a container's one process) until it exits; returns its exit
    status. Its configuration holds the API secret and admin key, so the folder goes when Janus does."""
    return run_in_foreground("janus", lambda folder: janus_command(folder, config), janus.janus_env(os.environ))


def run_coturn(config: coturn.CoturnConfig) -> int:
    """coturn in the foreground (`babelroom turn`), its configuration (with the shared secret) in a private
    folder that goes when it does."""
    return run_in_foreground("coturn", lambda folder: list(coturn.coturn_argv(coturn.write_config(folder, config))))


def run_in_foreground(name: str, command: Callable[[Path], list[str]], env: Mapping[str, str] | None = None) -> int:
    """The program `command` writes its configuration for, until it exits; returns its exit status. It runs in
    its own process group and gets SIGTERM and SIGINT from here, once each (a terminal's Ctrl-C reaches only
    this process)."""
    with tempfile.TemporaryDirectory(prefix=f"babelroom-{name}-") as folder:
        process = subprocess.Popen(command(Path(folder)), process_group=0, env=env)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda received, _frame: process.send_signal(received))
        code = process.wait()
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


@dataclass(frozen=True)
class UpOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    public_host: str = "localhost"  # the name or address other machines reach this one by (links, TURN URLs)
    turn: bool = False  # start coturn, and give each join a TURN credential for it
    node_id: str = field(default_factory=lambda: default_node_id())


def default_node_id() -> str:
    """This host's name, as a node id (at most 64 of letters, digits, '.', '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "node"


def public_url(env: Mapping[str, str], public_host: str, port: int) -> str:
    """What browsers reach a node by: `public_host` when it is a URL, else http://HOST:PORT (https and the HTTPS port
    when the node has a certificate)."""
    if "://" in public_host:
        return public_host.rstrip("/")
    tls = GatewayOptions.from_env(env).tls
    return f"https://{public_host}:{tls.port}" if tls.enabled else f"http://{public_host}:{port}"


def node_env(env: Mapping[str, str], node_id: str, url: str) -> dict[str, str]:
    """The settings that make a gateway media node `node_id` at `url`; raises ValueError for a bad id or URL."""
    NodeOptions.from_env(env, node_id, url)  # checked here, not in a crash loop of the child
    return {"BABELROOM_NODE_ID": node_id, "BABELROOM_PUBLIC_URL": url}


@dataclass(frozen=True)
class NodeRun:
    """`babelroom node`: where its gateway listens, what browsers reach it by, its id in the shared Redis."""

    host: str
    port: int
    url: str
    node_id: str


def node(env: Mapping[str, str], options: NodeRun) -> None:
    """A media node: its own Janus (unless BABELROOM_JANUS_URL names one) and a gateway that is node `node_id` of
    the cluster on REDIS_URL. SIGTERM drains the gateway (no new rooms; the rooms go on until they end or the grace
    passes) while Janus still serves them, then stops Janus."""
    child_env = {**env, **node_env(env, options.node_id, options.url)}
    grace_s = NodeOptions.from_env(child_env).drain_grace_s + STOP_GRACE_S
    supervisor = Supervisor([], first="gateway", first_grace_s=grace_s)
    with contextlib.ExitStack() as cleanup:
        janus_folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="babelroom-janus-"))
        cleanup.callback(supervisor.stop_all)
        if not child_env.get("BABELROOM_JANUS_URL"):
            child_env.update(start_private_janus(supervisor, child_env, Path(janus_folder)))
        argv = babelroom_argv("gateway", "--host", options.host, "--port", str(options.port))
        supervisor.children.append(Child("gateway", argv, child_env))
        _stop_on_signals(supervisor)
        print(f"Media node {options.node_id} is starting: {options.url}", flush=True)
        supervisor.run()


def workers(env: Mapping[str, str], kinds: Sequence[str]) -> None:
    """One worker of each kind in `kinds`, restarted when one crashes, all drained on SIGTERM."""
    supervisor = Supervisor([Child(f"worker-{kind}", babelroom_argv("worker", kind), dict(env)) for kind in kinds])
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(supervisor.stop_all)
        _stop_on_signals(supervisor)
        supervisor.run()


def _stop_on_signals(supervisor: Supervisor) -> None:
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)


def up(env: Mapping[str, str], options: UpOptions) -> None:
    host, port = options.host, options.port
    child_env = dict(env)
    supervisor = Supervisor([])
    with contextlib.ExitStack() as cleanup:
        private_redis = not child_env.get("REDIS_URL")
        if private_redis:  # it lives as long as `up`: its data dir goes when `up` stops (SIGKILL aside)
            data_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="babelroom-redis-"))
        janus_folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="babelroom-janus-"))
        cleanup.callback(supervisor.stop_all)  # runs before the folders are removed, even if starting fails
        if private_redis:
            child_env["REDIS_URL"] = start_private_redis(supervisor, child_env, data_dir)
        if options.turn:
            turn_folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="babelroom-coturn-"))
            child_env.update(start_coturn(supervisor, child_env, Path(turn_folder), options.public_host))
        if not child_env.get("BABELROOM_JANUS_URL"):
            child_env.update(start_private_janus(supervisor, child_env, Path(janus_folder)))
        child_env.setdefault("BABELROOM_OPEN_ROOMS", "1")  # local use: anyone on this machine may join
        # One media node: Ctrl-C stops it at once (no drain), and its own CPU never turns a room away.
        child_env.update(node_env(child_env, options.node_id, public_url(child_env, options.public_host, port)))
        child_env.setdefault("BABELROOM_DRAIN_GRACE_S", "0")
        child_env.setdefault("BABELROOM_NODE_MAX_LOAD", "0")
        supervisor.children.append(
            Child("gateway", babelroom_argv("gateway", "--host", host, "--port", str(port)), child_env)
        )
        supervisor.children += [
            Child(f"worker-{kind}", babelroom_argv("worker", kind), child_env) for kind in WORKER_KINDS
        ]
        _stop_on_signals(supervisor)
        shown_host = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
        print(
            f"BabelRoom is starting: open http://{shown_host}:{port}/room/demo"
            f"  (health: http://{shown_host}:{port}/healthz)",
            flush=True,
        )
        if child_env.get("BABELROOM_TLS_CERT"):
            https_port = GatewayOptions.from_env(child_env).tls.port
            print(f"From other machines: https://{options.public_host}:{https_port}/room/demo", flush=True)
        supervisor.run()


def start_private_redis(supervisor: Supervisor, env: dict[str, str], data_dir: str) -> str:
    child, url = redis_child(env, data_dir)
    supervisor.children.append(child)
    child.start()
    wait_for_redis(url)
    log.info("started a private redis-server at %s (data in %s)", url, data_dir)
    return url


def start_coturn(supervisor: Supervisor, env: Mapping[str, str], folder: Path, public_host: str) -> dict[str, str]:
    """coturn on TURN_PORT (and TLS on TURNS_PORT with the gateway's certificate), relaying to this host's own
    addresses only (where Janus is); returns the settings that give the gateway and Janus the same server."""
    relay_to = tuple(str(a) for a in host_addresses() if not a.is_loopback)
    config = coturn.CoturnConfig(
        secret=env.get("BABELROOM_TURN_SECRET") or coturn.CoturnConfig().secret,
        allowed_peers=relay_to,
        cert=env.get("BABELROOM_TLS_CERT", ""),
        key=env.get("BABELROOM_TLS_KEY", ""),
    )
    child = Child("coturn", list(coturn.coturn_argv(coturn.write_config(folder, config))), dict(env))
    supervisor.children.append(child)
    child.start()
    log.info("started coturn on port %d, relaying to %s", config.port, ", ".join(relay_to))
    return {"BABELROOM_TURN_URLS": ",".join(config.urls(public_host)), "BABELROOM_TURN_SECRET": config.secret}


def start_private_janus(supervisor: Supervisor, env: dict[str, str], folder: Path) -> dict[str, str]:
    """A private Janus (API on loopback, fresh secrets); returns what the gateway needs to drive it."""
    child, config = janus_child(env, folder)
    supervisor.children.append(child)
    child.start()
    janus.wait_for_janus(config)
    log.info("started a private Janus at %s", config.url)
    return janus.gateway_env(config)
