"""The scaling benchmark: the cost model's rows, and one tiny real run through the real stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scaling


def test_model_rows_cover_the_grid_with_k_below_n(tmp_path: Path) -> None:
    result = scaling.run(tmp_path, measure_up_to=0)
    rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
    assert rows == result["rows"]
    pairs = {(r["participants"], r["languages"]) for r in rows}
    assert pairs == {(n, k) for n in (2, 4, 8, 16, 32) for k in (1, 2, 4, 8) if k <= n - 1}
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_turn_taking_grows_with_k_not_with_n_squared() -> None:
    rows = {(r["participants"], r["languages"]): r for r in scaling.model_rows()}
    for k in (1, 2, 4):
        assert rows[(8, k)]["turn_taking_units"] == rows[(32, k)]["turn_taking_units"]  # flat in N
    assert rows[(32, 1)]["turn_taking_units"] < rows[(32, 2)]["turn_taking_units"] < rows[(32, 8)]["turn_taking_units"]
    growth = rows[(32, 8)]["turn_taking_units"] / rows[(32, 1)]["turn_taking_units"]
    assert growth <= 8  # at most linear in k
    assert rows[(32, 1)]["naive_units"] / rows[(2, 1)]["naive_units"] == pytest.approx(32 * 31 / 2)
    for (n, _k), row in rows.items():
        assert row["turn_taking_units"] <= row["naive_units"] or n == 2


def test_target_runs_repeat_available_languages_under_a_label() -> None:
    assert scaling.target_languages(4, ("es", "ca", "gl")) == ["es", "ca", "gl", "es#2"]


@pytest.mark.slow
def test_a_tiny_measured_run_uses_the_real_stages(tmp_path: Path) -> None:
    result = scaling.run(tmp_path, measure_up_to=2)
    measured = [r for r in result["rows"] if "measured_compute_s" in r]
    assert [(r["participants"], r["languages"]) for r in measured] == [(2, 1)]
    assert measured[0]["measured_compute_s"] > 0 and measured[0]["naive_compute_source"] == "measured"
    assert all(result["measured"]["per_stage_mean_s"][k] > 0 for k in scaling.STAGES)
