"""The media plane's cost: N browsers with 320x240 cameras in one room through Janus and the gateway.

`babelroom bench media --participants 2,4 --out DIR` runs, inside a network namespace of its own (Janus
gathers no candidates on loopback; see babelroom/netns.py), a private Redis, a private Janus and the
gateway, then N headless Chromium pages with fake cameras joining one room (half speak English, half
Spanish, so the gateway publishes one translated feed per listening language). After a warm-up it
measures, over a window:
- the media plane's CPU: Janus plus the gateway, in cores (CPU seconds per wall second), the browsers
  excluded;
- the received frame rate of every video stream at every page (frames decoded per second).
It writes media.json and media.png, beside the figures of the aiortc gateway this replaced (which
decoded every camera and encoded it again for every receiver), measured on the same machine before.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelroom import janus, netns
from babelroom.supervisor import free_port, redis_argv, wait_for_redis
from benchmarks.provenance import provenance, save

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-sandbox",
)
WARMUP_S = 10.0
WINDOW_S = 20.0
JOIN_TIMEOUT_MS = 30_000
LANGUAGES = ("en", "es")
# The aiortc gateway before Janus, measured on this machine (2 cores of an Intel Xeon) with the same
# headless Chromium pages and 320x240 fake cameras (issue 8): cores of the gateway process, received fps.
AIORTC_BEFORE = {
    2: {"cores": 0.48, "fps_min": 15.0, "fps_max": 15.0},
    4: {"cores": 0.73, "fps_min": 5.0, "fps_max": 7.0},
}
TARGET_CORES_AT_4 = 0.25
TARGET_FPS = 12.0
# Frames decoded so far by every video stream this page receives from Janus.
FRAMES_DECODED = """async () => {
  const out = {};
  for (const [feed, sub] of window.babelroom.state.subs) {
    const pc = sub.handle?.webrtcStuff?.pc;
    if (!pc) continue;
    for (const r of (await pc.getStats()).values()) {
      if (r.type === "inbound-rtp" && r.kind === "video") out[`${feed}/${r.ssrc}`] = r.framesDecoded || 0;
    }
  }
  return out;
}"""


@dataclass
class Row:
    participants: int
    cores: float
    janus_cores: float
    gateway_cores: float
    fps: list[float]

    def as_json(self) -> dict[str, Any]:
        fps = sorted(self.fps)
        return {
            "participants": self.participants,
            "cores": round(self.cores, 3),
            "janus_cores": round(self.janus_cores, 3),
            "gateway_cores": round(self.gateway_cores, 3),
            "video_streams": len(fps),
            "fps_min": round(fps[0], 1) if fps else 0.0,
            "fps_median": round(statistics.median(fps), 1) if fps else 0.0,
            "fps": [round(f, 1) for f in fps],
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def media_plane(
    workdir: Path, workers: Sequence[str] = (), settings: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes], str]]:
    """Redis, Janus, the gateway and one worker of each kind in `workers` as processes (`settings` added to
    their environment); yields the gateway's URL, the two processes the media benchmark measures, and Redis's
    URL."""
    procs: list[subprocess.Popen[bytes]] = []
    log = open(workdir / "services.log", "wb")  # noqa: SIM115 - closed below
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(redis_argv(redis_port, str(workdir)), stdout=subprocess.DEVNULL))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        wait_for_redis(redis_url)
        config = janus.JanusConfig.fresh(free_port(), ice_enforce_list=netns.TEST_INTERFACE)
        janus.write_config(workdir / "janus", config)
        janus_proc = subprocess.Popen(
            janus.janus_argv(workdir / "janus"), stdout=log, stderr=subprocess.STDOUT, env=janus.janus_env(os.environ)
        )
        procs.append(janus_proc)
        janus.wait_for_janus(config)
        port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "BABELROOM_OPEN_ROOMS": "1", **janus.gateway_env(config),
               **(settings or {})}  # fmt: skip
        argv = [sys.executable, "-m", "babelroom.cli", "gateway", "--host", "127.0.0.1", "--port", str(port)]
        gateway = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(gateway)
        for kind in workers:
            worker_argv = [sys.executable, "-m", "babelroom.cli", "worker", kind]
            procs.append(subprocess.Popen(worker_argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        yield f"http://127.0.0.1:{port}", janus_proc, gateway, redis_url
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        log.close()


def measure(
    base_url: str,
    janus_proc: subprocess.Popen[bytes],
    gateway: subprocess.Popen[bytes],
    n: int,
    quiet_wav: Path,
    window: tuple[float, float],
) -> Row:
    from playwright.sync_api import sync_playwright

    room = f"media{n}x{int(time.time()) % 100000}"
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={quiet_wav}"]
    with sync_playwright() as playwright:
        browsers = [playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args) for _ in range(n)]
        try:
            pages = []
            for i, browser in enumerate(browsers):
                page = browser.new_page()
                page.set_default_timeout(JOIN_TIMEOUT_MS)
                lang = LANGUAGES[i % len(LANGUAGES)]
                page.goto(f"{base_url}/room/{room}?name=P{i}&speak={lang}&hear={lang}&raw_audio=1")
                page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")
                pages.append(page)
            expected = n - 1  # every page receives every other camera
            for page in pages:
                page.wait_for_function(f"window.babelroom.state.subs.size >= {expected}")
            warmup_s, window_s = window
            time.sleep(warmup_s)
            before = [page.evaluate(FRAMES_DECODED) for page in pages]
            cpu_before = cpu_seconds(janus_proc.pid), cpu_seconds(gateway.pid)
            started = time.monotonic()
            time.sleep(window_s)
            elapsed = time.monotonic() - started
            cpu_after = cpu_seconds(janus_proc.pid), cpu_seconds(gateway.pid)
            after = [page.evaluate(FRAMES_DECODED) for page in pages]
        finally:
            for browser in browsers:
                browser.close()
    fps = [
        (frames - old.get(key, 0)) / elapsed
        for old, new in zip(before, after, strict=True)
        for key, frames in new.items()
    ]
    janus_cores = (cpu_after[0] - cpu_before[0]) / elapsed
    gateway_cores = (cpu_after[1] - cpu_before[1]) / elapsed
    return Row(n, janus_cores + gateway_cores, janus_cores, gateway_cores, fps)


def run(
    out_dir: Path, participants: Sequence[int] = (2, 4), warmup_s: float = WARMUP_S, window_s: float = WINDOW_S
) -> dict[str, Any]:
    if not netns.inside():
        netns.enter()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="babelroom-media-") as tmp:
        workdir = Path(tmp)
        quiet = write_quiet_wav(workdir / "quiet.wav")
        for n in participants:
            with media_plane(workdir) as (base_url, janus_proc, gateway, _):
                wait_for_gateway(base_url)
                row = measure(base_url, janus_proc, gateway, n, quiet, (warmup_s, window_s))
            rows.append(row)
            print(json.dumps(row.as_json()), flush=True)
    result = {
        "benchmark": "media",
        **provenance({"sfu": "Janus 1.1 VideoRoom", "browser": "headless Chromium"}),
        "camera": "Chromium fake camera, 320x240 at 15 fps, silent microphone",
        "window_s": window_s,
        "janus": [row.as_json() for row in rows],
        "aiortc_before": {str(n): v for n, v in AIORTC_BEFORE.items()},
        "targets": {"cores_at_4": TARGET_CORES_AT_4, "fps": TARGET_FPS},
    }
    save(result, out_dir, "media", plot)
    return result


def write_quiet_wav(path: Path) -> Path:
    import numpy as np

    from pipeline.audio import write_wav

    write_wav(path, np.zeros(48_000 * 5, dtype=np.float32), 48_000)
    return path


def wait_for_gateway(base_url: str, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    health = f"{base_url}/healthz"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(health, timeout=2) as reply:
            if json.loads(reply.read()).get("janus") == "connected":
                return
        time.sleep(0.2)
    raise SystemExit(f"the gateway at {base_url} did not connect to Janus within {timeout_s:.0f} s")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["janus"]
    ns = [r["participants"] for r in rows]
    fig, (cpu, fps) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.35
    xs = range(len(ns))
    before = [result["aiortc_before"].get(str(n), {}).get("cores", 0) for n in ns]
    cpu.bar([x - width / 2 for x in xs], before, width, label="aiortc gateway (before)", color="#c0c0c0")
    cpu.bar([x + width / 2 for x in xs], [r["cores"] for r in rows], width, label="Janus + gateway", color="#5b8cff")
    cpu.axhline(result["targets"]["cores_at_4"], color="#ef5a6f", linestyle="--", label="target at N=4")
    cpu.set_xticks(list(xs), [f"N={n}" for n in ns])
    cpu.set_ylabel("CPU cores (browsers excluded)")
    cpu.set_title("Media plane CPU")
    cpu.legend(fontsize=8)
    for x, r in zip(xs, rows, strict=True):
        fps.scatter([x] * len(r["fps"]), r["fps"], color="#36c9a4", alpha=0.7)
    fps.axhline(result["targets"]["fps"], color="#ef5a6f", linestyle="--", label="target")
    fps.set_xticks(list(xs), [f"N={n}" for n in ns])
    fps.set_ylim(0, 20)
    fps.set_ylabel("received fps per video stream")
    fps.set_title("Every received video stream")
    fps.legend(fontsize=8)
    fig.suptitle(f"{result['machine']}, {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
