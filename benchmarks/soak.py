"""`babelroom bench soak --minutes 60 --out DIR`: a long meeting's memory. Speech goes through the real service
(Janus, the gateway, the real asr, mt and tts workers, a private Redis, inside a network namespace of its own)
round after round for N minutes, in several rooms at once: in each round every room is opened, one aiortc
speaker says a few utterances of the `bench latency` corpus while one listener hears their translation, and
the room ends (benchmarks/latency.py `converse`).

Every SAMPLE_S it samples each service process's resident memory (from /proc), Redis's `used_memory` and the
size of its append-only file on disk. soak.json and soak.png hold the samples, and:
- each process's growth from the end of the warm-up to the end of the run (the median of the samples in the
  last minute of each, so one sample caught mid-allocation does not decide it), in per cent;
- missed final captions, in all and per round;
- latency drift: the final caption's and the translated speech's p50 in the first round against the last;
- what Redis holds when the talking stops, and again once the retention has passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelroom import netns
from benchmarks.latency import GAP_S, Heard, Utterance, converse, corpus, summarize, wait_for_workers
from pipeline.config import RETENTION_S, STREAM_PREFIX, TRIM_INTERVAL_S

DEFAULT_MINUTES = 60.0
WARMUP_MINUTES = 5.0  # the models' first calls, the allocators' first high-water marks: not growth
ROOMS = 2  # rooms talking at once (2 cores keep up with two speakers' Whisper base finals)
UTTERANCES_PER_ROUND = 4
SAMPLE_S = 20.0
WINDOW_S = 60.0  # growth compares the medians of the samples in the last WINDOW_S before each mark
GROWTH_LIMIT_PCT = 5.0  # issue 20: after the warm-up, no process grows by more than this
AOF_LIMIT_MB = 50.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    at_s: float  # since the run started
    rss_mb: dict[str, float]  # process name -> resident memory
    redis_used_mb: float
    aof_mb: float
    redis_keys: int = 0  # streams included


# -- what the run measures ----------------------------------------------------------------------------------------
def service_processes(parent: int) -> dict[str, int]:
    """The services a benchmark started (children of `parent`), by name: redis, janus, gateway, worker-asr, ..."""
    names = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and (name := process_name(argv)):
            names[name] = int(entry.name)
    return names


def process_name(argv: Sequence[str]) -> str:
    program = Path(argv[0]).name if argv else ""
    if program.startswith(("redis-server", "janus")):
        return program.split("-")[0]
    if "gateway" in argv:
        return "gateway"
    if "worker" in argv:
        return f"worker-{argv[argv.index('worker') + 1]}"
    return ""


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB if path.exists() else 0.0


class Sampler:
    """A thread that samples the services' memory every `every_s` until stopped."""

    def __init__(self, redis_url: str, aof_dir: Path, every_s: float = SAMPLE_S) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.aof_dir = aof_dir
        self.every_s = every_s
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the end of the run

    def sample(self) -> None:
        pids = service_processes(os.getpid())
        rss = {name: round(mb, 1) for name, pid in sorted(pids.items()) if (mb := rss_mb(pid)) is not None}
        used = int(self.client.info("memory")["used_memory"]) / MB
        at = round(time.monotonic() - self.started, 1)
        keys = int(self.client.dbsize())
        self.samples.append(Sample(at, rss, round(used, 2), round(folder_mb(self.aof_dir), 2), keys))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)


def leftovers(redis_url: str, prefix: str = STREAM_PREFIX) -> dict[str, dict[str, int]]:
    """What Redis holds: each stream's entries, and the other keys by kind (`emitted`, `frames`, `hb`, ...)."""
    import redis

    from pipeline.routes import STREAMS

    client = redis.Redis.from_url(redis_url)
    streams = {name: int(client.xlen(f"{prefix}:{name}")) for name in STREAMS}
    kinds: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        rest = key.decode(errors="replace").removeprefix(f"{prefix}:")
        if rest not in STREAMS:
            kind = rest.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    client.close()
    return {"stream_entries": streams, "other_keys": dict(sorted(kinds.items()))}


# -- the figures ----------------------------------------------------------------------------------------------------
def series(samples: Sequence[Sample]) -> dict[str, list[tuple[float, float]]]:
    """(time s, MB) per measured thing: each process, redis_used_memory, aof."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for name, mb in s.rss_mb.items():
            lines.setdefault(name, []).append((s.at_s, mb))
        lines.setdefault("redis_used_memory", []).append((s.at_s, s.redis_used_mb))
        lines.setdefault("aof", []).append((s.at_s, s.aof_mb))
    return lines


def level_at(points: Sequence[tuple[float, float]], at_s: float, window_s: float = WINDOW_S) -> float | None:
    """The median of the values sampled in the window before `at_s` (the nearest earlier one if none)."""
    inside = [mb for t, mb in points if at_s - window_s <= t <= at_s]
    if not inside:
        inside = [mb for t, mb in points if t <= at_s][-1:]
    return float(np.median(inside)) if inside else None


def growth(samples: Sequence[Sample], warmup_s: float) -> dict[str, dict[str, float | None]]:
    """Per process (and Redis's used memory, the AOF): MB at the end of the warm-up and at the end, growth %."""
    end_s = samples[-1].at_s if samples else 0.0
    table: dict[str, dict[str, float | None]] = {}
    for name, points in series(samples).items():
        start, end = level_at(points, warmup_s), level_at(points, end_s)
        pct = round(100 * (end - start) / start, 1) if start and end is not None else None
        table[name] = {"after_warmup_mb": _round(start), "end_mb": _round(end), "growth_pct": pct,
                       "max_mb": round(max(mb for _, mb in points), 1)}  # fmt: skip
    return table


def round_figures(index: int, started_s: float, heard: Sequence[Heard]) -> dict[str, Any]:
    figures = summarize(heard)
    return {
        "round": index,
        "started_s": round(started_s, 1),
        "utterances": figures["utterances"],
        "missed_final_captions": figures["missed_final_captions"],
        "final_caption_after_end_s": figures["final_caption_after_end_s"],
        "speech_start_after_end_s": figures["speech_start_after_end_s"],
    }


def drift(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """p50 latency in the first round and the last, and the difference, for the final caption and the speech."""
    if not rounds:
        return {}
    first, last = rounds[0], rounds[-1]
    out = {}
    for key in ("final_caption_after_end_s", "speech_start_after_end_s"):
        a, b = first[key]["p50"], last[key]["p50"]
        out[key] = {
            "first_p50": a,
            "last_p50": b,
            "drift_s": round(b - a, 3) if a is not None and b is not None else None,
        }
    return out


def summarize_soak(
    samples: Sequence[Sample], rounds: Sequence[dict[str, Any]], warmup_s: float, minutes: float
) -> dict[str, Any]:
    table = growth(samples, warmup_s)
    processes = {name: row for name, row in table.items() if name != "aof"}
    worst = max((row["growth_pct"] or 0.0 for row in processes.values()), default=0.0)
    aof_max = max((s.aof_mb for s in samples), default=0.0)
    return {
        "minutes": minutes,
        "warmup_minutes": round(warmup_s / 60, 2),
        "rooms": ROOMS,
        "rounds": len(rounds),
        "utterances": sum(r["utterances"] for r in rounds),
        "missed_final_captions": sum(r["missed_final_captions"] for r in rounds),
        "growth": table,
        "worst_growth_pct": worst,
        "aof_max_mb": aof_max,
        "latency_drift": drift(rounds),
        "targets": {"growth_pct": GROWTH_LIMIT_PCT, "aof_mb": AOF_LIMIT_MB, "missed_final_captions": 0},
        "meets_targets": worst <= GROWTH_LIMIT_PCT and aof_max < AOF_LIMIT_MB
        and sum(r["missed_final_captions"] for r in rounds) == 0,
    }  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """Memory over time, one line per process plus Redis's used memory and the AOF, the warm-up's end marked;
    below it, each round's p50 latencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [Sample(**s) for s in result["samples"]]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for name, points in series(samples).items():
        t, mb = zip(*points, strict=True)
        top.plot(np.array(t) / 60, mb, label=name, linestyle="--" if name in ("aof", "redis_used_memory") else "-")
    top.axvline(result["warmup_minutes"], color="grey", linestyle=":", label="end of warm-up")
    top.set_ylabel("MB (resident; Redis used; AOF on disk)")
    top.set_title(f"{result['minutes']} min, {result['rooms']} rooms, {result['rounds']} rounds: worst growth "
                  f"{result['worst_growth_pct']} %, AOF at most {result['aof_max_mb']} MB, "
                  f"{result['missed_final_captions']} missed finals")  # fmt: skip
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    starts = [r["started_s"] / 60 for r in result["per_round"]]
    for key, label in (("final_caption_after_end_s", "final caption p50"), ("speech_start_after_end_s", "speech p50")):
        bottom.plot(starts, [r[key]["p50"] for r in result["per_round"]], marker="o", label=label)
    bottom.set_xlabel("minutes")
    bottom.set_ylabel("s after end of speech")
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- the run --------------------------------------------------------------------------------------------------------
def round_plan(utterances: Sequence[Utterance], index: int, rooms: int = ROOMS) -> list[list[Utterance]]:
    """What each room says in round `index`: a direction per room (en->es, es->en, ...), the next few
    utterances of that direction's corpus, cycling."""
    directions = sorted({(u.language, u.target) for u in utterances})
    plan = []
    for room in range(rooms):
        direction = directions[room % len(directions)]
        pool = [u for u in utterances if (u.language, u.target) == direction]
        start = (index * UTTERANCES_PER_ROUND + room) % len(pool)
        plan.append([pool[(start + i) % len(pool)] for i in range(UTTERANCES_PER_ROUND)])
    return plan


async def one_round(base_url: str, index: int, plan: Sequence[Sequence[Utterance]]) -> list[Heard]:
    """Every room of the plan talks at once; the same room names every round (each ends, then opens again)."""
    talks = [converse(base_url, f"soak-{room}", spoken, GAP_S, [spoken[0].target]) for room, spoken in enumerate(plan)]
    return [h for heard in await asyncio.gather(*talks) for h in heard]


@contextmanager
def service(workdir: Path) -> Iterator[tuple[str, str]]:
    from benchmarks.media import media_plane
    from pipeline.routes import SPEECH_KINDS

    with media_plane(workdir, SPEECH_KINDS) as (base_url, _, _, redis_url):
        wait_for_workers(base_url, SPEECH_KINDS)
        yield base_url, redis_url


def run(
    out_dir: Path, minutes: float = DEFAULT_MINUTES, warmup_minutes: float | None = None, sample_s: float = SAMPLE_S
) -> dict[str, Any]:
    """Talk for `minutes` (rounds start until then; the last one finishes) and write soak.json and soak.png."""
    from benchmarks.latency import models_in_use
    from benchmarks.provenance import provenance, save

    if not netns.inside():
        netns.enter()
    warmup_s = 60 * (min(WARMUP_MINUTES, minutes / 4) if warmup_minutes is None else warmup_minutes)
    utterances = corpus()
    workdir = out_dir / "soak-run"  # services.log, Janus's configuration, Redis's files
    workdir.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    with service(workdir) as (base_url, redis_url):
        with Sampler(redis_url, workdir / "appendonlydir", sample_s) as sampler:  # its last sample: the run's end
            while time.monotonic() - sampler.started < 60 * minutes:
                started_s = time.monotonic() - sampler.started
                heard = asyncio.run(one_round(base_url, len(rounds), round_plan(utterances, len(rounds))))
                rounds.append(round_figures(len(rounds), started_s, heard))
                print(json.dumps(rounds[-1]), flush=True)
        held = {"at_the_end": leftovers(redis_url)}
        time.sleep(RETENTION_S + 2 * TRIM_INTERVAL_S)  # the meetings are over: what the retention leaves
        held["after_the_retention"] = leftovers(redis_url)
    result = {
        "benchmark": "soak",
        **provenance(models_in_use(os.environ)),
        "participants": f"{ROOMS} rooms at once, each an aiortc speaker and listener through Janus and the gateway",
        **summarize_soak(sampler.samples, rounds, warmup_s, minutes),
        "redis_holds": held,
        "per_round": rounds,
        "samples": [vars(s) for s in sampler.samples],
    }
    save(result, out_dir, "soak", plot)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_round", "samples")}, indent=2), flush=True)
    return result
