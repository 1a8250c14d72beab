"""`babelroom bench gpu`: the GPU engines at real size, per stage and end to end, and rooms per GPU.

Models (benchmarks.models): Whisper large-v3-turbo, NLLB-200 600M and an MMS-TTS voice per target language,
built from their configs with random weights (nothing downloaded; compute cost only), or the user's models
by path. `tiny` swaps in tiny random models: it runs in seconds on a CPU, in the tests.

1. Per stage, through the real stages' batch path (AsrStage/MtStage/TtsStage.process_batch, so the guard's VAD
   and the duration fitting count too): seconds for a batch of B segments of SEGMENT_S, B in BATCHES.
   tau = batch seconds / segment seconds (each segment of the batch waits for the whole batch);
   cost_tau = tau / B (compute per second of speech). The target on an H100: ASR + MT + TTS at B=1 within
   TARGET_SUM_S for a 5 s segment.
2. End to end: the real workers (one per stage, batch path on) on the Redis bus, S rooms speaking at real-time
   rate, S climbing ROOM_LADDER until the p95 end-to-end latency passes LATENCY_BOUND_S. Rooms per GPU: the
   largest S within it (target on an H100: TARGET_ROOMS).
Writes gpu.json and gpu.png (gpu-cpu-tiny.json ... off its usual device: see result_stem).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Load, WorkerArgv, running_workers, schedule, serve_pipelined, set_ticks
from benchmarks.models import ModelSet
from benchmarks.pipeline import load_stages
from benchmarks.provenance import provenance, result_stem, save
from pipeline.audio import Samples, float_to_pcm16, resample
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import SAMPLE_RATE, Message, SpeechSegment, Transcript, Translation
from workers.stage import BatchStage

# The slot for lip-sync: "lipsync" joins these (with its inputs in stage_inputs) once its stage has a batch path
# (workers/engines/lipsync/base.py; Wav2Lip in fp16 on a GPU); the worker's batch path needs nothing more.
STAGES = ("asr", "mt", "tts")
TARGETS = ("es", "fr")  # each segment is heard in two languages: MT has 2 rows per segment
BATCHES = (1, 4, 8, 16)
SEGMENT_S = 5.0
REPEATS = 3  # timed runs per stage and batch size (after one untimed warm-up); the median is kept
E2E_BATCH_SIZE = 16
ROOM_LADDER = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128)
UTTERANCES = 4  # per room and rung: 20 s of speech
LATENCY_BOUND_S = 1.0
DRAIN_S = 30.0
TARGET_SUM_S = 0.35
TARGET_ROOMS = 50
# --tiny: what keeps it well under a minute on 2 CPU cores.
TINY = {"batches": (1, 4), "rooms": (1, 2), "utterances": 2, "repeats": 1, "segment_s": 1.5}

ENGLISH = (
    "Good morning everyone, thank you for joining the meeting today. The new version of the website is ready.",
    "We need to hire two more engineers before the end of the year, and please send me the report after lunch.",
)
SPANISH = "Buenos días a todos, gracias por venir. La nueva versión de la página web está lista."
FRENCH = "Bonjour à tous, merci d'être venus. La nouvelle version du site web est prête."


@dataclass(frozen=True)
class Plan:
    batches: tuple[int, ...] = BATCHES
    rooms: tuple[int, ...] = ROOM_LADDER
    utterances: int = UTTERANCES
    repeats: int = REPEATS
    segment_s: float = SEGMENT_S


def run(
    out_dir: Path,
    redis_url: str,
    worker_argv: WorkerArgv,
    device: str,
    models: ModelSet,
    tiny: bool = False,
    rooms: Sequence[int] | None = None,
    clips: tuple[Samples, ...] | None = None,
) -> dict[str, Any]:
    """`clips`: the speech, segment_s long each (speech_clips' by default; given where Piper is not installed)."""
    plan = Plan(**TINY) if tiny else Plan()  # type: ignore[arg-type]
    if rooms:
        plan = dataclasses.replace(plan, rooms=tuple(rooms))
    clips = clips or speech_clips(plan.segment_s)
    stages = load_stages(models.env(device, 1))
    stage_rows = [row for kind in STAGES for row in stage_taus(stages[kind], kind, clips, plan)]
    del stages  # the workers load their own copies
    env = models.env(device, E2E_BATCH_SIZE)
    e2e_rows = asyncio.run(rooms_per_gpu(env, clips, plan, redis_url, worker_argv, out_dir))
    passing = [r["rooms"] for r in e2e_rows if r["p95_s"] is not None and r["p95_s"] <= LATENCY_BOUND_S]
    result = {
        **provenance(models.names, device),
        "device": device,
        "tiny": tiny,
        "segment_s": plan.segment_s,
        "targets": list(TARGETS),
        "stages": stage_rows,
        "sum_batch1_s": round(sum(r["seconds"] for r in stage_rows if r["batch"] == 1), 3),
        "target_sum_s": TARGET_SUM_S,
        "e2e_batch_size": E2E_BATCH_SIZE,
        "e2e": e2e_rows,
        "latency_bound_s": LATENCY_BOUND_S,
        "rooms_per_gpu": max(passing, default=0),
        "target_rooms": TARGET_ROOMS,
    }
    save(result, out_dir, result_stem("gpu", device, tiny, "cuda"), plot)
    print(table(result))
    return result


def speech_clips(segment_s: float) -> tuple[Samples, ...]:
    """Real speech, `segment_s` long: the bundled Piper voice, padded or cut to the segment length."""
    from workers.engines.tts.piper import PiperSynthesizer

    voice = PiperSynthesizer()
    n = int(segment_s * SAMPLE_RATE)
    clips = []
    for text in ENGLISH:
        audio = voice.synthesize(text, "en")
        samples = resample(audio.samples, audio.sample_rate, SAMPLE_RATE)[:n]
        clips.append(np.pad(samples, (0, n - samples.size)).astype(np.float32))
    return tuple(clips)


def stage_inputs(kind: str, clips: Sequence[Samples], batch: int) -> list[Message]:
    """`batch` messages for one stage, each from its own room, as the stage before it would send them."""
    n = clips[0].size
    common: dict[str, Any] = {"speaker": "bench", "seq": 0, "start_sample": 0, "end_sample": n}
    messages: list[Message] = []
    for i in range(batch):
        room = f"bench-room{i}"
        if kind == "asr":
            pcm = float_to_pcm16(clips[i % len(clips)])
            messages.append(SpeechSegment(room=room, language="en", targets=TARGETS, pcm=pcm, **common))
        elif kind == "mt":
            text = ENGLISH[i % len(ENGLISH)]
            messages.append(Transcript(room=room, language="en", targets=TARGETS, text=text, **common))
        else:
            language = TARGETS[i % len(TARGETS)]
            text = SPANISH if language == "es" else FRENCH
            messages.append(Translation(room=room, source_language="en", language=language, text=text, **common))
    return messages


def stage_taus(stage: Any, kind: str, clips: Sequence[Samples], plan: Plan) -> list[dict[str, Any]]:
    if not isinstance(stage, BatchStage):
        raise TypeError(f"the {kind} stage has no batch path")
    rows = []
    for batch in plan.batches:
        messages = stage_inputs(kind, clips, batch)
        seconds = median_seconds(functools.partial(run_batch, stage, kind, messages), plan.repeats)
        tau = seconds / plan.segment_s
        rows.append(
            {"stage": kind, "batch": batch, "seconds": round(seconds, 4), "tau": round(tau, 4),
             "cost_tau": round(tau / batch, 5)}
        )  # fmt: skip
        print(f"{kind:<4} batch {batch:>2}: {seconds:.3f} s  tau {tau:.3f}  per segment {tau / batch:.4f}", flush=True)
    return rows


def run_batch(stage: BatchStage, kind: str, messages: list[Message]) -> None:
    outcomes = stage.process_batch(messages)
    failed = [o for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise RuntimeError(f"the {kind} stage failed on {len(failed)} of {len(outcomes)} messages: {failed[0]!r}")


def median_seconds(work: Callable[[], None], repeats: int) -> float:
    work()  # warm-up: kernels, allocator, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def rooms_per_gpu(
    env: Mapping[str, str], clips: tuple[Samples, ...], plan: Plan, redis_url: str, worker_argv: WorkerArgv, out: Path
) -> list[dict[str, Any]]:
    """Climb the room ladder with the real workers until the p95 passes the bound."""
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix="bench-gpu"))
    rows = []
    try:
        async with running_workers(bus, worker_argv, env, out / "logs" / "bench-gpu"):
            await serve_pipelined(bus, Load(clips, 1, 1, TARGETS), "warmup", DRAIN_S * 4)
            for rooms in plan.rooms:
                load = Load(clips, rooms, plan.utterances, TARGETS)
                timeout = schedule(load, "t")[-1].ready_s + DRAIN_S
                figures = await serve_pipelined(bus, load, f"gpu-s{rooms}", timeout)
                rows.append({"rooms": rooms, **figures})
                print(f"e2e S={rooms}: p50 {figures['p50_s']} s, p95 {figures['p95_s']} s", flush=True)
                if figures["finished"] < figures["segments"] or (figures["p95_s"] or 0) > LATENCY_BOUND_S:
                    break
    finally:
        await bus.close()
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [f"{'stage':<5} {'batch':>5} {'seconds':>8} {'tau':>7} {'per segment':>12}"]
    lines += [
        f"{r['stage']:<5} {r['batch']:>5} {r['seconds']:>8.3f} {r['tau']:>7.3f} {r['cost_tau']:>12.4f}"
        for r in result["stages"]
    ]
    lines.append(f"ASR + MT + TTS at batch 1: {result['sum_batch1_s']} s (target on an H100: {TARGET_SUM_S} s)")
    lines += [f"S={r['rooms']:>3}: p50 {r['p50_s']} s, p95 {r['p95_s']} s" for r in result["e2e"]]
    lines.append(
        f"rooms with p95 <= {LATENCY_BOUND_S} s: {result['rooms_per_gpu']} (target on an H100: {TARGET_ROOMS})"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (stage_ax, e2e_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in STAGES:
        rows = [r for r in result["stages"] if r["stage"] == kind]
        batches = [r["batch"] for r in rows]
        line = stage_ax.plot(batches, [r["tau"] for r in rows], "-o", label=f"{kind}: batch s / segment s")[0]
        stage_ax.plot(batches, [r["cost_tau"] for r in rows], ":", color=line.get_color(), label=f"{kind}: per segment")
    stage_ax.set(xscale="log", yscale="log", xlabel="batch size (segments from different rooms)", ylabel="tau")
    set_ticks(stage_ax, [r["batch"] for r in result["stages"] if r["stage"] == "asr"])
    stage_ax.legend(fontsize=7)
    stage_ax.set_title(f"per stage, {result['segment_s']:g} s segments", fontsize=9)
    rooms = [r["rooms"] for r in result["e2e"] if r["p50_s"] is not None]
    e2e_ax.plot(rooms, [r["p50_s"] for r in result["e2e"] if r["p50_s"] is not None], "-o", label="p50")
    e2e_ax.plot(rooms, [r["p95_s"] for r in result["e2e"] if r["p95_s"] is not None], "-s", label="p95")
    e2e_ax.axhline(result["latency_bound_s"], color="k", linestyle=":", label=f"{result['latency_bound_s']} s bound")
    e2e_ax.set(xlabel="concurrently speaking rooms", ylabel="end-to-end latency (s)", xscale="log")
    set_ticks(e2e_ax, rooms)
    e2e_ax.legend(fontsize=7)
    e2e_ax.set_title(f"end to end, batch {result['e2e_batch_size']}: {result['rooms_per_gpu']} rooms", fontsize=9)
    fig.suptitle(f"{result['machine']}; {result['date']}", fontsize=8)
    models = "models: " + "; ".join(f"{stage}: {name}" for stage, name in result["models"].items())
    fig.text(0.5, 0.005, models, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
