"""`babelroom bench soak`'s machinery on a small scale: it finds the services it started and samples their memory,
Redis's used memory and the AOF on disk; growth after the warm-up, latency drift and the plot come from the
samples; the report renders the section. (The run itself is `bench latency`'s conversation, round after round:
tests/test_bench_latency.py runs that end to end.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report, soak
from benchmarks.latency import Utterance
from benchmarks.soak import Sample, Sampler
from pipeline.bus import Bus
from pipeline.messages import SpeechSegment


def test_the_services_are_named_by_their_command_lines() -> None:
    assert soak.process_name(["/usr/bin/redis-server", "--port", "1"]) == "redis"
    assert soak.process_name(["/usr/bin/janus", "-F", "/tmp/j"]) == "janus"
    assert soak.process_name(["/venv/bin/python", "-m", "babelroom.cli", "gateway", "--port", "1"]) == "gateway"
    assert soak.process_name(["/venv/bin/python", "-m", "babelroom.cli", "worker", "tts"]) == "worker-tts"
    assert soak.process_name(["/bin/sleep", "5"]) == ""


def test_the_sampler_finds_its_services_and_reads_their_memory(redis_url: str, tmp_path: Path) -> None:
    aof = tmp_path / "appendonlydir"
    aof.mkdir()
    (aof / "appendonly.aof.1.incr.aof").write_bytes(b"x" * 3 * soak.MB)
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(40 << 20); time.sleep(30)",
                              "worker", "asr"])  # fmt: skip
    try:
        time.sleep(1.0)
        with Sampler(redis_url, aof, every_s=0.2) as sampler:
            time.sleep(0.5)
    finally:
        child.kill()
        child.wait()
    assert len(sampler.samples) >= 3
    last = sampler.samples[-1]
    assert last.rss_mb["worker-asr"] > 40  # the child's 40 MB buffer
    assert last.redis_used_mb > 0.5 and last.aof_mb == 3.0


def samples(minutes: int, grow: dict[str, float]) -> list[Sample]:
    """A sample every 20 s; each process starts at 100 MB and grows linearly by `grow` per cent over the run."""
    count = minutes * 3 + 1
    out = []
    for i in range(count):
        rss = {name: round(100 * (1 + pct / 100 * i / (count - 1)), 2) for name, pct in grow.items()}
        out.append(Sample(at_s=20.0 * i, rss_mb=rss, redis_used_mb=5.0, aof_mb=2.0 + 0.1 * (i % 5)))
    return out


def rounds(p50s: list[float], missed: int = 0) -> list[dict[str, Any]]:
    figures = []
    for i, p50 in enumerate(p50s):
        latency = {"p50": p50, "p95": p50 + 0.5, "count": 8}
        figures.append({"round": i, "started_s": 60.0 * i, "utterances": 8, "missed_final_captions": missed,
                        "final_caption_after_end_s": latency, "speech_start_after_end_s": latency})  # fmt: skip
    return figures


def test_growth_is_measured_after_the_warm_up_and_flagged_past_the_target() -> None:
    result = soak.summarize_soak(samples(20, {"gateway": 0.0, "worker-tts": 20.0}), rounds([0.7, 0.9]), 300.0, 20)
    growth = result["growth"]
    assert growth["gateway"]["growth_pct"] == 0.0
    # From the end of the warm-up (5 of 20 minutes: 105 MB, the median of the minute before) to the end (120 MB)
    assert 12 < growth["worker-tts"]["growth_pct"] < 15
    assert growth["redis_used_memory"]["growth_pct"] == 0.0 and growth["aof"]["max_mb"] == 2.4
    assert result["worst_growth_pct"] == growth["worker-tts"]["growth_pct"] and not result["meets_targets"]
    assert result["latency_drift"]["final_caption_after_end_s"] == {"first_p50": 0.7, "last_p50": 0.9, "drift_s": 0.2}
    calm = soak.summarize_soak(samples(20, {"gateway": 2.0}), rounds([0.7, 0.7]), 300.0, 20)
    assert calm["meets_targets"] and calm["missed_final_captions"] == 0
    assert not soak.summarize_soak(samples(20, {"gateway": 2.0}), rounds([0.7], missed=1), 300.0, 20)["meets_targets"]


def test_soak_json_plot_and_report(tmp_path: Path) -> None:
    result = {
        "benchmark": "soak", "machine": "2 cores of an Example CPU", "date": "2030-01-02", "models": {"asr": "w"},
        "participants": "2 rooms", **soak.summarize_soak(samples(10, {"gateway": 1.0}), rounds([0.7, 0.8]), 120.0, 10),
        "per_round": rounds([0.7, 0.8]), "samples": [vars(s) for s in samples(10, {"gateway": 1.0})],
    }  # fmt: skip
    (tmp_path / "soak.json").write_text(json.dumps(result))
    soak.plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    text = report.run(tmp_path, tmp_path / "RESULTS.md")
    assert "## A long meeting's memory (soak)" in text
    row = result["growth"]["gateway"]
    assert f"| gateway | {row['after_warmup_mb']} | {row['end_mb']} | {row['growth_pct']} |" in text
    assert "final caption p50 0.7 -> 0.8 s" in text and "bench soak --minutes 10" in text


def test_each_room_says_the_next_utterances_of_its_direction() -> None:
    silence = np.zeros(160, np.float32)
    pool = [Utterance("en", "es", f"en{i}", silence) for i in range(6)]
    pool += [Utterance("es", "en", f"es{i}", silence) for i in range(6)]
    first, second = soak.round_plan(pool, 0), soak.round_plan(pool, 1)
    assert [u.text for u in first[0]] == ["en0", "en1", "en2", "en3"]
    assert [u.text for u in first[1]] == ["es1", "es2", "es3", "es4"]
    assert [u.text for u in second[0]] == ["en4", "en5", "en0", "en1"]  # cycling through the corpus


async def test_what_redis_holds_is_counted_by_stream_and_kind(redis_url: str, bus: Bus) -> None:
    await bus.publish(SpeechSegment(room="r", speaker="s", seq=0, language="en", targets=("es",)))
    await bus.client.set(bus.key("emitted", "asr:r:s:0:"), "1", ex=60)
    await bus.client.set(bus.key("frames", "r:s:0"), "x", ex=60)
    held = soak.leftovers(redis_url, bus.options.prefix)
    assert held["stream_entries"]["asr"] == 1 and held["stream_entries"]["results"] == 0
    assert held["other_keys"] == {"emitted": 1, "frames": 1}
