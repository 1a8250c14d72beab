"""`bench capacity`'s own reckoning, without the service: which lines each room says, the rates from two readings,
what gave out first, and its RESULTS.md section and plot (the run itself is the benchmark: `babelroom bench
capacity`, as root)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import capacity, report
from benchmarks.capacity import STEP_UTTERANCES, Step, Usage, first_limit, rates, step_utterances
from benchmarks.latency import Utterance


def utterances() -> list[Utterance]:
    silence = np.zeros(1600, np.float32)
    lines = [Utterance("en", "es", f"english {i}", silence) for i in range(13)]
    return lines + [Utterance("es", "en", f"spanish {i}", silence) for i in range(13)]


def step(rooms: int, holds: bool, busy: float, cores: dict[str, float], queues: dict[str, float]) -> Step:
    return Step(
        rooms=rooms, holds=holds, final_p50_s=0.8, final_p95_s=1.2 if holds else 2.5, missed=0, utterances=rooms * 5,
        seconds=40.0, cores=cores, cores_per_room={k: v / rooms for k, v in cores.items()}, machine_busy=busy,
        load_average=1.0, redis_bytes_per_s_per_room=50_000, redis_entries_per_s_per_room=3.5, stage_mean_s=queues,
    )  # fmt: skip


def test_rooms_alternate_directions_and_start_apart() -> None:
    lines = [step_utterances(utterances(), 0, room) for room in range(3)]
    assert [len(room) for room in lines] == [STEP_UTTERANCES] * 3
    assert [{u.language for u in room} for room in lines] == [{"en"}, {"es"}, {"en"}]
    assert lines[0][0].text != lines[2][0].text, "two rooms of one direction start at different lines"
    assert step_utterances(utterances(), 1, 0)[0].text == f"english {STEP_UTTERANCES}", "the next step goes on"


def test_rates_between_two_readings() -> None:
    before = Usage(at=10.0, cpu_s={"gateway": 5.0}, machine=(100, 400), redis_bytes=1_000, redis_xadds=10)
    after = Usage(at=20.0, cpu_s={"gateway": 8.0}, machine=(400, 1_400), redis_bytes=501_000, redis_xadds=60)
    assert rates(before, after) == ({"gateway": 0.3}, 0.3, 50_000.0, 5.0)


def test_what_gave_out_first() -> None:
    quiet = {"asr": 0.4}
    held = step(1, True, 0.3, {"gateway-a": 0.2, "worker-asr": 0.3}, quiet)
    machine = step(3, False, 0.97, {"gateway-a": 0.6, "worker-asr": 1.1}, {"asr queue": 1.5, "asr": 0.5})
    assert first_limit([held, machine], {}).startswith("the machine's")
    assert "of the service, worker-asr took the most, 1.1 cores" in first_limit([held, machine], {})
    assert "of a final's way, asr queue grew the most (+1.50 s)" in first_limit([held, machine], {})
    gateway = dataclasses.replace(machine, machine_busy=0.7, cores={"gateway-a": 0.93, "worker-asr": 0.5})
    assert first_limit([held, gateway], {}).startswith("gateway-a: 0.93 of its one core at 3 rooms")
    assert first_limit([held], {}) == "nothing: every step up to 1 rooms held"


def test_the_report_section_and_plot(tmp_path: Path) -> None:
    one = [step(1, True, 0.3, {"gateway-cap-a": 0.2}, {}), step(2, False, 0.95, {"gateway-cap-a": 0.5}, {})]
    result: dict[str, Any] = {
        "benchmark": "capacity", "machine": "2 cores", "date": "2026-12-07", "models": {"asr": "x"},
        "load_average": 1.0, "target_final_p95_s": 1.8, "step_utterances": 5, "participants": "aiortc pairs",
        "configs": [{"nodes": n, "rooms_held": 1, "first_limit": "the machine's 2 cores", "idle_cores": {},
                     "steps": [dataclasses.asdict(s) for s in one]} for n in (1, 2)],
    }  # fmt: skip
    lines = report.capacity_section("capacity", result, tmp_path, "results")
    text = "\n".join(lines)
    assert "**1 media node(s)**: 1 talking rooms held; first limit: the machine's 2 cores" in text
    assert "| 2 | **no** | 0.8 | 2.5 | 0 | 95% | 1.0 |" in text
    assert "gateway-cap-a 0.2" in text and "50,000 bytes/s" in text
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    capacity.plot(result, tmp_path / "again.png")
