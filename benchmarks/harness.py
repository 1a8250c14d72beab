"""The load the pipeline benchmarks put on the service, and the two ways of serving it.

Load: S rooms, one speaker each, speaking at real-time rate: utterance after utterance with a short pause,
each segment ready when its speech ends (as the gateway's segmenter closes it), the rooms out of phase.

- Sequential: one loop takes the segments in order of arrival and runs ASR -> MT -> TTS (every target
  language) on each before it starts the next: the seed paper's baseline.
- Pipelined: the segments go on the Redis bus to real worker processes (`babelroom worker asr|mt|tts`), one
  per stage, each with its own concurrency and batch size: stage i works on segment n while stage i+1 works
  on segment n-1, and segments of different rooms share a stage.

End-to-end latency of a segment: from when it is ready (the end of its speech) to when the speech of its last
target language is out. Both ways are timed against the same schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelroom.supervisor import stop_processes
from pipeline.audio import Samples, float_to_pcm16
from pipeline.bus import Bus
from pipeline.messages import SAMPLE_RATE, SpeechSegment, SynthesizedSpeech
from pipeline.routes import RESULTS, SPEECH_KINDS
from workers.stage import Stage

PAUSE_S = 0.6  # between one utterance and the next: a breath, as a speaker who holds the floor pauses
WORKERS_READY_S = 300.0  # loading large models onto a GPU takes a while
POLL_MS = 200

WorkerArgv = Callable[[str], list[str]]  # the command that runs one worker of a kind (given by the CLI)


@dataclass(frozen=True)
class Load:
    """S rooms, each with one speaker saying `utterances` clips (cycling through `clips`) at real-time rate."""

    clips: tuple[Samples, ...]
    rooms: int
    utterances: int
    targets: tuple[str, ...]
    language: str = "en"
    pause_s: float = PAUSE_S

    @property
    def mean_clip_s(self) -> float:
        return float(np.mean([c.size for c in self.clips])) / SAMPLE_RATE


@dataclass(frozen=True)
class Utterance:
    room: str
    seq: int
    ready_s: float  # from the start of the run: when the speech ends and its segment is ready
    samples: Samples


def schedule(load: Load, run_id: str) -> list[Utterance]:
    """Every room's utterances in order of readiness. Room r starts r/S of a period late: independent rooms
    are not in step."""
    period = load.mean_clip_s + load.pause_s
    plan = []
    for r in range(load.rooms):
        at = r * period / load.rooms
        for i in range(load.utterances):
            clip = load.clips[(r + i) % len(load.clips)]
            at += clip.size / SAMPLE_RATE
            plan.append(Utterance(f"{run_id}-room{r}", i, at, clip))
            at += load.pause_s
    return sorted(plan, key=lambda u: u.ready_s)


def segment_message(utterance: Utterance, load: Load) -> SpeechSegment:
    return SpeechSegment(
        room=utterance.room,
        speaker=f"{utterance.room}-speaker",
        seq=utterance.seq,
        language=load.language,
        targets=load.targets,
        start_sample=utterance.seq * 10 * SAMPLE_RATE,
        end_sample=utterance.seq * 10 * SAMPLE_RATE + utterance.samples.size,
        pcm=float_to_pcm16(utterance.samples),
    )


def summary(latencies_s: Sequence[float], span_s: float, expected: int) -> dict[str, Any]:
    """p50/p95/max latency and throughput (segments finished per second, first ready to last done)."""
    values = np.asarray(latencies_s, dtype=np.float64)
    done = int(values.size)
    return {
        "segments": expected,
        "finished": done,
        "p50_s": round(float(np.percentile(values, 50)), 3) if done else None,
        "p95_s": round(float(np.percentile(values, 95)), 3) if done else None,
        "max_s": round(float(values.max()), 3) if done else None,
        "throughput_per_s": round(done / span_s, 3) if span_s > 0 else None,
    }


# --- sequential ----------------------------------------------------------------------------------


def run_through(stages: Mapping[str, Stage], segment: SpeechSegment) -> list[SynthesizedSpeech]:
    """ASR, then MT, then TTS for every target: one segment all the way, nothing else meanwhile."""
    speech: list[SynthesizedSpeech] = []
    for transcript in stages["asr"].process(segment):
        for translation in stages["mt"].process(transcript):
            speech += [m for m in stages["tts"].process(translation) if isinstance(m, SynthesizedSpeech)]
    return speech


def serve_sequentially(stages: Mapping[str, Stage], load: Load, run_id: str) -> dict[str, Any]:
    plan = schedule(load, run_id)
    start = time.monotonic()
    latencies = []
    for utterance in plan:
        time.sleep(max(0.0, start + utterance.ready_s - time.monotonic()))
        run_through(stages, segment_message(utterance, load))
        latencies.append(time.monotonic() - start - utterance.ready_s)
    return summary(latencies, time.monotonic() - start - plan[0].ready_s, len(plan))


# --- pipelined -----------------------------------------------------------------------------------


async def serve_pipelined(bus: Bus, load: Load, run_id: str, timeout_s: float) -> dict[str, Any]:
    """Publish each segment when it is ready; the run ends when every target's speech is out (or at the
    timeout: what did not finish is counted as such)."""
    plan = schedule(load, run_id)
    waiting = {(u.room, u.seq): set(load.targets) for u in plan}
    done_at: dict[tuple[str, int], float] = {}
    loop = asyncio.get_running_loop()
    collector = asyncio.create_task(collect(bus, await latest_id(bus, RESULTS), waiting, done_at))
    start = loop.time()
    for utterance in plan:
        await asyncio.sleep(max(0.0, start + utterance.ready_s - loop.time()))
        await bus.publish(segment_message(utterance, load).stamped("captured"))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collector, timeout=max(1.0, timeout_s - (loop.time() - start)))
    latencies = [done_at[(u.room, u.seq)] - start - u.ready_s for u in plan if (u.room, u.seq) in done_at]
    last = max(done_at.values(), default=start) - start
    return summary(latencies, last - plan[0].ready_s, len(plan))


async def collect(
    bus: Bus, after: bytes | str, waiting: dict[tuple[str, int], set[str]], done_at: dict[tuple[str, int], float]
) -> None:
    """Read the results stream until every awaited segment has its speech in every target language."""
    loop = asyncio.get_running_loop()
    while len(done_at) < len(waiting):
        for delivery in await bus.tail(RESULTS, last_id=after, count=500, block_ms=POLL_MS):
            after = delivery.entry_id
            message = delivery.message
            key = (message.room, message.seq) if message else ("", -1)
            if isinstance(message, SynthesizedSpeech) and key in waiting and key not in done_at:
                waiting[key].discard(message.language)
                if not waiting[key]:
                    done_at[key] = loop.time()


async def latest_id(bus: Bus, stream: str) -> bytes | str:
    newest: Any = await bus.client.xrevrange(bus.stream(stream), count=1)
    return newest[0][0] if newest else "0"


@contextlib.asynccontextmanager
async def running_workers(
    bus: Bus, worker_argv: WorkerArgv, env: Mapping[str, str], log_dir: Path
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """One real worker process per stage on this bus, their models loaded; stopped (SIGTERM) on exit."""
    env = {**os.environ, **env, "REDIS_URL": bus.options.redis_url, "BABELROOM_STREAM_PREFIX": bus.options.prefix}
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for kind in SPEECH_KINDS:
            with (log_dir / f"worker-{kind}.log").open("wb") as log:
                procs.append(subprocess.Popen(worker_argv(kind), env=env, stdout=log, stderr=subprocess.STDOUT))
        await wait_loaded(bus, procs, log_dir)
        yield procs
    finally:
        stop_processes(procs, 40.0)


async def wait_loaded(bus: Bus, procs: list[subprocess.Popen[bytes]], log_dir: Path) -> None:
    """Until every kind has a heartbeat (a worker beats only once its model is loaded)."""
    deadline = time.monotonic() + WORKERS_READY_S
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker exited while loading ({dead[0].args!r}); see the logs in {log_dir}")
        alive = await bus.alive_workers()
        if all(alive.get(kind, 0) > 0 for kind in SPEECH_KINDS):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the workers did not load within {WORKERS_READY_S:.0f} s; see the logs in {log_dir}")


def set_ticks(ax: Any, values: Sequence[int]) -> None:
    """Plain numbers at the measured points of a log x axis, no minor ticks (for the benchmarks' plots)."""
    ax.set_xticks(list(values), [str(v) for v in values])
    ax.set_xticks([], minor=True)
