"""`babelroom bench hops` on a small scale: real worker processes on a private Redis serve interim requests
from their own streams and the finals behind them, and every final's stamps split into hops and work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.hops import run
from benchmarks.stages import SENTENCES


@pytest.mark.slow
def test_real_workers_serve_interims_and_finals(tmp_path: Path) -> None:
    result = run(tmp_path, sentences=SENTENCES[2:3], rounds=2)  # "... ready next week.", twice
    assert json.loads((tmp_path / "hops.json").read_text()) == json.loads(json.dumps(result))
    assert result["segments"] == 2
    assert {"asr queue", "asr", "mt queue", "mt", "tts queue", "tts"} <= set(result["later_segments"])
    assert result["interim_round_trip_ms"]["count"] >= 2  # translated interim captions came back
    for stamps in result["stamps"]:
        stages = [stage for stage, _ in stamps]
        assert stages == ["published", "asr.start", "asr", "mt.start", "mt", "tts.start", "tts"]
