"""`babelroom bench latency` end to end on a small scale: three short utterances (two en->es, one es->en)
spoken by an aiortc participant into the real gateway, Janus and workers, while a second one listens, then
again with two listeners of different languages. It
writes latency.json with the issue's measures and the plot. The figures themselves come from the full
benchmark (README), not from this test: here they need only be plausible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import EN_ES, ES_EN, corpus, run

pytestmark = pytest.mark.slow

MEASURES = ("first_interim_after_onset_s", "final_caption_after_end_s", "speech_start_after_end_s")


def test_bench_latency_measures_interim_final_and_speech(media_namespace: str, tmp_path: Path) -> None:
    utterances = corpus(en_es=(EN_ES[1], EN_ES[4]), es_en=(ES_EN[1],))
    result = run(tmp_path, utterances, gap_s=3.0, target_counts=(1, 2))
    written = json.loads((tmp_path / "latency.json").read_text())
    # Whisper base sometimes hears nothing it trusts in espeak-ng's Spanish (the guard empties the final): one
    # miss is the model's, not the benchmark's
    assert written["utterances"] == result["utterances"] == 3 and written["missed_final_captions"] <= 1
    for measure in MEASURES:
        assert written[measure]["count"] >= 2, f"{measure} measured for most utterances"
        assert 0 < written[measure]["p50"] <= written[measure]["p95"] < 15, measure
    for row in written["per_utterance"]:
        if row["first_interim_after_onset_s"] is not None:  # an interim shows while speaking, before the final
            assert row["first_interim_after_onset_s"] < row["duration_s"] + row["final_caption_after_end_s"]
    assert {"asr", "mt", "tts"} <= {name.split()[0] for name in written["stage_mean_s"]}, "stages from stamps"
    assert written["longest_utterance"]["interim_updates"] >= 1
    two = written["by_targets"]["2"]  # es and ca hear the English, en and ca the Spanish
    assert two["languages"] == ["ca", "en", "es"] and two["first_interim_after_onset_s"]["count"] >= 4
    assert two["first_interim_by_language_s"]["ca"]["count"] >= 2, "the second language, in both rooms"
    assert {"onset->captured", "asr", "mt", "results->listener"} <= set(two["first_interim_hop_mean_s"])
    assert len(written["per_utterance"]) == 3 + 6, "a row per utterance and listener"
    assert (tmp_path / "latency.png").stat().st_size > 10_000
