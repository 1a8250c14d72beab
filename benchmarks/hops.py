"""Where a segment's time goes between the stages: real workers, real Redis, real speech, no gateway.

Starts a private redis-server and one `babelroom worker` process per kind, publishes English segments
(the bundled Piper voice) one at a time, each after the previous one's speech came back, and reads the
stamps of what arrives on `results`. Every stage stamps when it takes a message (`{stage}.start`) and
when it is done (`{stage}`), so the path splits into queue hops (the previous stamp to a stage's start)
and work (start to done). `babelroom bench hops --out DIR` writes DIR/hops.json and prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from babelroom.supervisor import free_port, redis_argv, wait_for_redis
from benchmarks.stages import SENTENCES, speech_clip
from pipeline.audio import float_to_pcm16
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import SpeechSegment, SynthesizedSpeech
from pipeline.routes import RESULTS, WORKER_KINDS
from pipeline.stamps import stage_spans
from workers.base import alive_workers
from workers.engines.tts import PiperSynthesizer

ROUNDS = 2  # each sentence this many times: the first round includes every first-call cost
RESULT_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 180.0  # the workers load their models before the first segment is sent
PREFIX = "hops"


@contextlib.contextmanager
def service(log_dir: Path) -> Iterator[str]:
    """A private redis-server and one worker per kind, stopped on exit; yields the Redis URL."""
    port = free_port()
    redis_proc = subprocess.Popen(redis_argv(port, tempfile.mkdtemp(prefix="hops-redis-")), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "REDIS_URL": url, "BABELROOM_STREAM_PREFIX": PREFIX}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_redis(url)
        for kind in WORKER_KINDS:
            log = (log_dir / f"worker-{kind}.log").open("wb")
            argv = [sys.executable, "-m", "babelroom.cli", "worker", kind]
            workers.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        yield url
    finally:
        for proc in (*workers, redis_proc):
            proc.terminate()
        for proc in (*workers, redis_proc):
            proc.wait(timeout=60)


async def run_segments(url: str, clips: Sequence[np.ndarray]) -> list[SynthesizedSpeech]:
    bus = Bus.connect(BusOptions(redis_url=url, prefix=PREFIX))
    last_id: bytes | str = "$"
    spoken: list[SynthesizedSpeech] = []
    try:
        await wait_for_workers(bus)
        for seq, clip in enumerate(clips):
            segment = SpeechSegment(
                room="bench", speaker="ana", seq=seq, language="en", targets=("es",),
                start_sample=0, end_sample=clip.size, pcm=float_to_pcm16(clip),
            )  # fmt: skip
            await bus.publish(segment.stamped("published"))
            speech, last_id = await wait_for_speech(bus, seq, last_id)
            spoken.append(speech)
    finally:
        await bus.close()
    return spoken


async def wait_for_workers(bus: Bus) -> None:
    """Workers heartbeat once loaded, so the first segment measures first-call costs, not model loading."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while set((await alive_workers(bus)).keys()) < set(WORKER_KINDS):
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not all alive within {LOAD_TIMEOUT_S:.0f} s: {await alive_workers(bus)}")
        await asyncio.sleep(0.2)


async def wait_for_speech(bus: Bus, seq: int, last_id: bytes | str) -> tuple[SynthesizedSpeech, bytes | str]:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while time.monotonic() < deadline:
        for delivery in await bus.tail(RESULTS, last_id=last_id, block_ms=1000):
            last_id = delivery.entry_id
            if isinstance(delivery.message, SynthesizedSpeech) and delivery.message.seq == seq:
                return delivery.message, last_id
    raise TimeoutError(f"segment {seq}: no speech on {RESULTS} within {RESULT_TIMEOUT_S:.0f} s")


def summarize(spoken: Sequence[SynthesizedSpeech], first: int) -> dict[str, dict[str, float]]:
    """Per span (hop or work), p50 and max in milliseconds over the messages from index `first` on."""
    spans: dict[str, list[float]] = {}
    for speech in spoken[first:]:
        for name, seconds in stage_spans(speech.stamps):
            spans.setdefault(name, []).append(seconds * 1000)
    return {
        name: {"p50_ms": round(float(np.percentile(v, 50)), 1), "max_ms": round(max(v), 1)} for name, v in spans.items()
    }


def run(out_dir: Path, sentences: Sequence[str] = SENTENCES[:4], rounds: int = ROUNDS) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    piper = PiperSynthesizer()
    clips = [speech_clip(piper, s, "en") for s in sentences] * rounds
    with service(out_dir) as url:
        spoken = asyncio.run(run_segments(url, clips))
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "segments": len(spoken),
        "first_segment": summarize(spoken[:1], 0),
        "later_segments": summarize(spoken, 1),
        "stamps": [list(s.stamps) for s in spoken],
    }
    (out_dir / "hops.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    first, later = result["first_segment"], result["later_segments"]
    print(f"{'span':<24} {'first ms':>9} {'later p50 ms':>13} {'later max ms':>13}")
    for name, figures in later.items():
        head = f"{name:<24} {first.get(name, {}).get('p50_ms', float('nan')):>9.1f}"
        print(f"{head} {figures['p50_ms']:>13.1f} {figures['max_ms']:>13.1f}")


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out"))
