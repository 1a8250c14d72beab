"""`babelroom bench pipeline`: the seed paper's comparison, a sequential loop against the asynchronous pipeline.

The same load (benchmarks.harness: S rooms, one speaker each, speaking at real-time rate; S = 1, 2, 4, 8)
is served three ways:
- sequential: one loop, ASR -> MT -> TTS for every target, one segment after another;
- pipelined, concurrency 1: the Redis pipeline with one real worker process per stage, each taking one
  message at a time. What this adds over the loop is only that the stages overlap;
- pipelined: the same with the workers' default concurrency (WORKER_CONCURRENCY messages each) and, on a
  GPU, their batch path (GPU_BATCH_SIZE ready messages from any rooms as one batch).

On the CPU the engines are the offline defaults (faster-whisper base, Apertium, espeak-ng); with
`device="cuda"` the torch engines on random-weight Whisper large-v3-turbo, NLLB-200 600M and MMS-TTS
(benchmarks.models), or the user's models. Writes pipeline.json and pipeline.png: p50/p95 end-to-end latency
and throughput per way and S.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    Load,
    WorkerArgv,
    run_through,
    running_workers,
    schedule,
    segment_message,
    serve_pipelined,
    serve_sequentially,
    set_ticks,
)
from benchmarks.models import ModelSet
from benchmarks.provenance import cpu_whisper, provenance, result_stem, save
from pipeline.audio import Samples, resample
from pipeline.bus import Bus
from pipeline.config import WORKER_CONCURRENCY, BusOptions
from pipeline.messages import SAMPLE_RATE
from pipeline.routes import SPEECH_KINDS
from workers.stage import Stage

ROOMS = (1, 2, 4, 8)
UTTERANCES = 12  # per speaker and run: about 40 s of speech each
# A Spanish speaker heard in five languages: every segment is one ASR, then MT and TTS for each language
# (Apertium pairs and pivots that install offline; espeak-ng voices, and Piper's for English).
SPEAKER_LANGUAGE = "es"
CPU_TARGETS = ("en", "pt", "fr", "ca", "gl")
GPU_TARGETS = ("en", "fr")  # one random MMS-TTS voice per language
GPU_BATCH_SIZE = 8
# A run stops waiting for stragglers this long after its last segment is ready.
DRAIN_S = 120.0
SPEECH_TEXTS = (
    "Buenos días a todos, gracias por venir a la reunión de hoy.",
    "La nueva versión de la página web estará lista la semana que viene.",
    "Tenemos que contratar a dos ingenieros más antes de fin de año.",
    "Por favor, envíame el informe después de comer.",
    "El cliente pidió un precio más bajo y una entrega más rápida.",
    "Creo que deberíamos probar el sistema con más usuarios primero.",
)


@dataclass(frozen=True)
class Way:
    name: str
    concurrency: int = 0  # 0: the sequential loop
    batch_size: int = 1


def ways(device: str) -> list[Way]:
    batched = GPU_BATCH_SIZE if device.startswith("cuda") else 1
    label = f"pipelined (concurrency {WORKER_CONCURRENCY}" + (f", batch {batched})" if batched > 1 else ")")
    return [Way("sequential"), Way("pipelined (concurrency 1)", 1), Way(label, WORKER_CONCURRENCY, batched)]


def speech_clips(texts: Sequence[str] = SPEECH_TEXTS) -> tuple[Samples, ...]:
    """Real speech: the sentences said by espeak-ng's Spanish voice, 16 kHz."""
    from workers.engines.tts.espeak import EspeakSynthesizer

    voice = EspeakSynthesizer()
    clips = []
    for text in texts:
        audio = voice.synthesize(text, SPEAKER_LANGUAGE)
        clips.append(resample(audio.samples, audio.sample_rate, SAMPLE_RATE))
    return tuple(clips)


def engine_settings(device: str, models: ModelSet | None) -> tuple[dict[str, str], tuple[str, ...], dict[str, str]]:
    """The workers' settings, the target languages, and the model names for the figures: the offline CPU
    defaults, or the torch engines on `models`."""
    if models is not None:
        return models.env(device, GPU_BATCH_SIZE), tuple(models.voices), models.names
    if device != "cpu":
        raise ValueError(f"on {device} the benchmark needs the torch engines' models (benchmarks.models.model_set)")
    names = {"asr": cpu_whisper(), "mt": "Apertium", "tts": "espeak-ng, Piper joe (en)"}
    return {}, CPU_TARGETS, names


def load_stages(env: Mapping[str, str]) -> dict[str, Stage]:
    from workers.registry import build_stage

    stages = {kind: build_stage(kind, env) for kind in SPEECH_KINDS}
    for stage in stages.values():
        stage.load()
    return stages


def run(
    out_dir: Path,
    redis_url: str,
    worker_argv: WorkerArgv,
    device: str = "cpu",
    models: ModelSet | None = None,
    rooms: Sequence[int] = ROOMS,
    utterances: int = UTTERANCES,
    tiny: bool = False,
    clips: tuple[Samples, ...] | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Serve the load every way for every S; write out_dir/pipeline.json and pipeline.png (pipeline-cuda.json
    ..., see result_stem). `models` replace the CPU defaults by the torch engines (required on cuda); `clips`
    the speech; `only` names the ways to run (all of them when empty)."""
    env, targets, names = engine_settings(device, models)
    clips = clips or speech_clips()
    loads = {s: Load(clips, s, utterances, targets, SPEAKER_LANGUAGE) for s in rooms}
    rows = []
    for way in (w for w in ways(device) if not only or w.name in only):
        if way.concurrency == 0:
            rows += sequential_rows(way, env, loads)
        else:
            settings = {**env, "BABELROOM_WORKER_CONCURRENCY": str(way.concurrency)}
            settings["BABELROOM_BATCH_SIZE"] = str(way.batch_size)
            rows += asyncio.run(pipelined_rows(way, settings, loads, redis_url, worker_argv, out_dir))
    result = {
        **provenance(names, device),
        "device": device,
        "load": {
            "speaker_language": SPEAKER_LANGUAGE,
            "targets": list(targets),
            "utterances_per_speaker": utterances,
            "mean_segment_s": round(loads[rooms[0]].mean_clip_s, 2),
            "pause_s": loads[rooms[0]].pause_s,
            "latency": "from the end of a segment's speech to the end of the last target's synthesized speech",
        },
        "rows": rows,
        "p50_speedup": speedups(rows),
    }
    save(result, out_dir, result_stem("pipeline", device, tiny, "cpu"), plot)
    print(table(rows))
    return result


def sequential_rows(way: Way, env: Mapping[str, str], loads: Mapping[int, Load]) -> list[dict[str, Any]]:
    stages = load_stages(env)
    first = next(iter(loads.values()))
    run_through(stages, segment_message(schedule(first, "warmup")[0], first))  # one-off costs, not timed
    return [row(way, load, serve_sequentially(stages, load, f"seq-s{s}")) for s, load in loads.items()]


async def pipelined_rows(
    way: Way, env: Mapping[str, str], loads: Mapping[int, Load], redis_url: str, worker_argv: WorkerArgv, out: Path
) -> list[dict[str, Any]]:
    prefix = f"bench-c{way.concurrency}-b{way.batch_size}"
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=prefix))
    try:
        async with running_workers(bus, worker_argv, env, out / "logs" / prefix):
            first = next(iter(loads.values()))
            await serve_pipelined(bus, Load(first.clips, 1, 1, first.targets, first.language), "warmup", DRAIN_S)
            rows = []
            for s, load in loads.items():
                timeout = schedule(load, "t")[-1].ready_s + DRAIN_S
                rows.append(row(way, load, await serve_pipelined(bus, load, f"{prefix}-s{s}", timeout)))
            return rows
    finally:
        await bus.close()


def row(way: Way, load: Load, figures: dict[str, Any]) -> dict[str, Any]:
    rooms = load.rooms
    result = {"way": way.name, "concurrency": way.concurrency, "batch_size": way.batch_size, "rooms": rooms}
    result |= figures | {"offered_per_s": round(rooms / (load.mean_clip_s + load.pause_s), 3)}
    print(f"{way.name:<40} S={rooms}: p50 {figures['p50_s']} s, p95 {figures['p95_s']} s", flush=True)
    return result


def speedups(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per pipelined way and S: the sequential p50 divided by its p50 (above 1: the pipeline is faster)."""
    sequential = {r["rooms"]: r["p50_s"] for r in rows if r["concurrency"] == 0}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["concurrency"] and r["p50_s"] and sequential.get(r["rooms"]):
            out.setdefault(r["way"], {})[str(r["rooms"])] = round(sequential[r["rooms"]] / r["p50_s"], 2)
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'way':<40} {'S':>2} {'p50 s':>7} {'p95 s':>7} {'seg/s':>6} {'done':>9}"]
    for r in rows:
        figures = f"{r['p50_s']!s:>7} {r['p95_s']!s:>7} {r['throughput_per_s']!s:>6}"
        lines.append(f"{r['way']:<40} {r['rooms']:>2} {figures} {r['finished']:>4}/{r['segments']:<4}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency_ax, throughput_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["way"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["way"] == name and r["p50_s"] is not None]
        rooms = [r["rooms"] for r in rows]
        line = latency_ax.plot(rooms, [r["p50_s"] for r in rows], "-o", label=f"{name} p50")[0]
        latency_ax.plot(rooms, [r["p95_s"] for r in rows], ":", color=line.get_color(), label=f"{name} p95")
        throughput_ax.plot(rooms, [r["throughput_per_s"] for r in rows], "-o", color=line.get_color(), label=name)
    offered = sorted({(r["rooms"], r["offered_per_s"]) for r in result["rows"]})
    throughput_ax.plot(*zip(*offered, strict=True), "k:", label="offered: the speakers' segments per second")
    all_rooms = sorted({r["rooms"] for r in result["rows"]})
    latency_ax.set(xlabel="concurrent speakers S (one room each)", ylabel="end-to-end latency (s)", yscale="log")
    throughput_ax.set(xlabel="concurrent speakers S (one room each)", ylabel="segments finished per second")
    for ax in (latency_ax, throughput_ax):
        ax.set_xscale("log", base=2)
        set_ticks(ax, all_rooms)
        ax.legend(fontsize=7)
    load = result["load"]
    fig.suptitle(
        f"Sequential vs pipelined, {load['speaker_language']} -> {', '.join(load['targets'])}; "
        f"{result['machine']}; {result['date']}",
        fontsize=8,
    )
    fig.text(
        0.5, 0.005, "models: " + "; ".join(f"{k}: {v}" for k, v in result["models"].items()), ha="center", fontsize=7
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_at(result: dict[str, Any], rooms: int) -> float:
    """The best pipelined way's p50 speed-up over the sequential loop at S=rooms."""
    return float(np.max([by_s.get(str(rooms), 0.0) for by_s in result["p50_speedup"].values()] or [0.0]))
