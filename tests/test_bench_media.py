"""`babelroom bench media` runs end to end (two browsers, a short window): it writes media.json with the
media plane's CPU and every received stream's frame rate, and the plot. The figures themselves come
from the full benchmark on a quiet machine (README), not from this test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.media import run

pytestmark = pytest.mark.slow


def test_bench_media_writes_cpu_and_fps_for_every_stream(media_namespace: str, tmp_path: Path) -> None:
    result = run(tmp_path, participants=(2,), warmup_s=2.0, window_s=3.0)
    [row] = json.loads((tmp_path / "media.json").read_text())["janus"]
    assert result["janus"][0] == row
    assert row["participants"] == 2 and row["video_streams"] == 2, "each page receives the other's camera"
    assert row["fps_min"] > 5 and row["janus_cores"] > 0 and row["gateway_cores"] > 0
    assert (tmp_path / "media.png").stat().st_size > 10_000
