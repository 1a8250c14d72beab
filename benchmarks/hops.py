"""Where a segment's time goes between the stages: real workers, real Redis, real speech, no gateway.

Starts a private redis-server and one `babelroom worker` process per kind and speaks English clips (the
bundled Piper voice) to them as the gateway would: while a clip "is being spoken" (in real time), an
InterimTracker sends its audio so far every 0.6 s to `asr_interim`; when it ends, the final segment
(with the committed words) goes to `asr`, and the next clip starts once its speech came back. Every stage
stamps when it takes a message (`{stage}.start`) and when it is done (`{stage}`), so a final's path
splits into queue hops and work; interim round trips are timed from publishing a request to its
translation arriving on `results`. `babelroom bench hops --out DIR` writes DIR/hops.json, prints a table.
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
from pipeline.interim import InterimTracker
from pipeline.messages import InterimTranscript, InterimTranslation, Message, SpeechSegment, SynthesizedSpeech
from pipeline.routes import RESULTS, SPEECH_KINDS
from pipeline.stamps import stage_spans
from workers.engines.tts.piper import PiperSynthesizer

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
        for kind in SPEECH_KINDS:
            log = (log_dir / f"worker-{kind}.log").open("wb")
            argv = [sys.executable, "-m", "babelroom.cli", "worker", kind]
            workers.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        yield url
    finally:
        for proc in (*workers, redis_proc):
            proc.terminate()
        for proc in (*workers, redis_proc):
            proc.wait(timeout=60)


class Results:
    """Everything that arrives on `results`, with its arrival time."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.arrived: list[tuple[float, Message]] = []
        self._last_id: bytes | str = "$"

    async def listen(self) -> None:
        while True:
            for delivery in await self.bus.tail(RESULTS, last_id=self._last_id, block_ms=200):
                self._last_id = delivery.entry_id
                if delivery.message is not None:
                    self.arrived.append((time.time(), delivery.message))

    def of(self, kind: type[Message], seq: int) -> list[tuple[float, Message]]:
        return [(at, m) for at, m in self.arrived if isinstance(m, kind) and m.seq == seq]


async def run_segments(url: str, clips: Sequence[np.ndarray]) -> tuple[list[SynthesizedSpeech], list[float]]:
    """Speak every clip; returns each final's speech and every interim round trip in seconds."""
    bus = Bus.connect(BusOptions(redis_url=url, prefix=PREFIX))
    results = Results(bus)
    listener = asyncio.create_task(results.listen())
    spoken: list[SynthesizedSpeech] = []
    round_trips: list[float] = []
    try:
        await wait_for_workers(bus)
        for seq, clip in enumerate(clips):
            sent = await speak_with_interims(bus, results, seq, clip)
            spoken.append(await wait_for_speech(results, seq))
            round_trips += [
                at - sent[m.revision]
                for at, m in results.of(InterimTranslation, seq)
                if isinstance(m, InterimTranslation) and m.revision in sent
            ]
    finally:
        listener.cancel()
        await bus.close()
    return spoken, round_trips


async def speak_with_interims(bus: Bus, results: Results, seq: int, clip: np.ndarray) -> dict[int, float]:
    """The clip's audio grows in real time; interim requests go out as the tracker asks; then the final.
    Returns when each interim revision was sent."""
    tracker, sent = InterimTracker(), {}
    step = round(tracker.options.interval_s * 16_000)
    for end in range(step, clip.size + step, step):
        await asyncio.sleep(tracker.options.interval_s)
        for _, reply in results.of(InterimTranscript, seq):
            assert isinstance(reply, InterimTranscript)
            tracker.accept(reply)
        request = tracker.request("bench", "ana", seq, "en", ("es",), 0, clip[: min(end, clip.size)])
        if request is not None:
            sent[request.revision] = time.time()
            await bus.publish(request.stamped("published"))
    segment = SpeechSegment(
        room="bench", speaker="ana", seq=seq, language="en", targets=("es",), start_sample=0,
        end_sample=clip.size, pcm=float_to_pcm16(clip), committed=tracker.close(seq),
    )  # fmt: skip
    await bus.publish(segment.stamped("published"))
    return sent


async def wait_for_workers(bus: Bus) -> None:
    """Workers heartbeat once loaded, so the first segment measures first-call costs, not model loading."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while set((await bus.alive_workers()).keys()) < set(SPEECH_KINDS):
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not all alive within {LOAD_TIMEOUT_S:.0f} s: {await bus.alive_workers()}")
        await asyncio.sleep(0.2)


async def wait_for_speech(results: Results, seq: int) -> SynthesizedSpeech:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while time.monotonic() < deadline:
        for _, speech in results.of(SynthesizedSpeech, seq):
            assert isinstance(speech, SynthesizedSpeech)
            return speech
        await asyncio.sleep(0.01)
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
        spoken, round_trips = asyncio.run(run_segments(url, clips))
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "segments": len(spoken),
        "first_segment": summarize(spoken[:1], 0),
        "later_segments": summarize(spoken, 1),
        "interim_round_trip_ms": {
            "count": len(round_trips),
            "p50": round(float(np.percentile(round_trips, 50)) * 1000, 1) if round_trips else None,
            "p95": round(float(np.percentile(round_trips, 95)) * 1000, 1) if round_trips else None,
        },
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
    trips = result["interim_round_trip_ms"]
    print(f"interim request -> translated interim caption: p50 {trips['p50']} ms, p95 {trips['p95']} ms "
          f"({trips['count']} interims)")  # fmt: skip


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out"))
