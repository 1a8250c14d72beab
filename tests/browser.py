"""Helpers for the browser end-to-end tests: a fake-mic WAV, the service's processes, headless Chromium.

Also an entry point for the gateway subprocess (`python -m tests.browser gateway --port N`), which reads
the same environment the `babelroom gateway` command does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from babelroom.supervisor import stop_processes
from pipeline.audio import resample, write_wav
from pipeline.routes import WORKER_KINDS
from tests.speech import espeak, silence

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-sandbox",
)
MIC_RATE = 48_000
# Chromium plays a fake microphone from the moment the page opens it, and people greet the room as soon as the page
# opens (issue 27): the sentence starts 1 s in. Words said before the page's audio reaches the room are lost (the
# page says "Connecting your microphone…" until then); the tests' sentences end with the words they check.
LEAD_IN_S = 1.0
# Chromium loops the fake-mic file: the tail of silence keeps the next repetition well after the
# first utterance's translation has played, so measurements never mix two utterances.
TAIL_S = 14.0
WORKERS_READY_S = 90.0
ROOT = Path(__file__).resolve().parent.parent
# The pages' microphones are fake files: they ask the room page for raw capture, since the browser's voice
# processing (on for real users) would clip and gate them.
RAW_AUDIO = "raw_audio=1"


def fake_mic_wav(
    path: Path, text: str | None, voice: str = "en", lead_in_s: float = LEAD_IN_S, tail_s: float = TAIL_S
) -> Path:
    """48 kHz mono WAV: silence, the sentence, a long silence (or only silence when text is None). Chromium
    starts the file when the page opens the microphone, and loops it: the lead-in is the time the page has to get
    its audio into the room before the sentence starts, lead-in and tail together the time between repetitions."""
    speech = espeak(text, voice) if text else np.zeros(0, dtype=np.float32)
    samples = np.concatenate([silence(lead_in_s), speech, silence(tail_s)])
    write_wav(path, resample(samples, 16_000, MIC_RATE), MIC_RATE)
    return path


def service_env(redis_url: str, prefix: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "BABELROOM_STREAM_PREFIX": prefix, "BABELROOM_OPEN_ROOMS": "1"})
    env.update(extra or {})
    return env


@contextlib.contextmanager
def processes(
    commands: list[list[str]], env: Mapping[str, str], log_dir: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    try:
        for i, argv in enumerate(commands):
            log = open(log_dir / f"proc{i}-{argv[-1]}.log", "wb")  # noqa: SIM115 - closed with the process
            running.append(subprocess.Popen(argv, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        yield running
    finally:
        stop_processes(running, 15.0)


def gateway_command(port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "tests.browser", "gateway", "--host", host, "--port", str(port)]


def worker_commands() -> list[list[str]]:
    return [[sys.executable, "-m", "babelroom.cli", "worker", kind] for kind in WORKER_KINDS]


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return 0, None


def wait_ready(
    base_url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = WORKERS_READY_S
) -> dict[str, Any]:
    """Until /healthz says every worker kind is alive (models loaded); fails early if a process died."""
    deadline = time.monotonic() + timeout_s
    body: Any = None
    while time.monotonic() < deadline:
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"a service process exited early: {dead}")
        status, body = get_json(f"{base_url}/healthz")
        if status == 200 and body and body.get("status") == "ok":
            return dict(body)
        time.sleep(0.5)
    raise AssertionError(f"workers not ready within {timeout_s} s: {body}")


def serve_gateway(argv: list[str] | None = None) -> None:
    from aiohttp import web

    from gateway.options import GatewayOptions
    from gateway.web.app import create_app
    from gateway.web.serve import serve
    from pipeline.bus import Bus
    from pipeline.config import BusOptions

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["gateway"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    env = os.environ
    options = GatewayOptions.from_env(env)

    async def build() -> web.Application:
        return create_app(Bus.connect(BusOptions.from_env(env)), options)

    serve(build, args.host, args.port, options.tls)


if __name__ == "__main__":
    from pipeline import logs

    logs.configure("INFO", logs.secrets_in(os.environ), quiet=("aioice", "aiohttp.access"))
    serve_gateway()
