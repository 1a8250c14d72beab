"""`babelroom bench attack` on a small scale: two short utterances (en->es) spoken through the real gateway, Janus
and workers, in quiet and then while an attacker sends at least 200 bad requests and frames from another
address and as a participant of another room. The room goes on: every utterance gets its final caption in both
runs, no attack item is answered 5xx or left unanswered, the limits answer the outsider 429, and nothing is
logged as an unexpected error. The figures come from the full benchmark (docs/benchmarks.md), not from here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.attack import run
from benchmarks.latency import EN_ES, corpus

pytestmark = pytest.mark.slow


def test_bench_attack_measures_the_room_in_quiet_and_under_attack(media_namespace: str, tmp_path: Path) -> None:
    result = run(tmp_path, corpus(en_es=(EN_ES[1], EN_ES[4]), es_en=()), gap_s=3.0, minimum=200)
    written = json.loads((tmp_path / "attack.json").read_text())
    assert written["attack_items"] == result["attack_items"] >= 200
    assert written["attack_server_errors"] == 0 and written["unexpected_errors_in_log"] == 0, written
    attack = written["attacked"]["attack"]
    assert attack["unanswered"] == 0 and 429 in {int(status) for status in attack["statuses"]}, attack["statuses"]
    assert {"events frame", "janus frame", "join, worst body"} <= set(attack["by_kind"])
    for name in ("quiet", "attacked"):
        figures = written[name]
        assert figures["missed_final_captions"] == 0, (name, figures)
        assert 0 < figures["final_caption_after_end_s"]["p50"] <= figures["final_caption_after_end_s"]["p95"] < 15
        assert figures["loop_lag_polls"] > 0 and figures["loop_lag_worst_s"] >= 0
    assert (tmp_path / "attack.png").stat().st_size > 10_000
