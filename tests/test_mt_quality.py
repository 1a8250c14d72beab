"""The MT quality benchmark's parts: the references, the scorer, one engine scored, the report's section."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import mt_quality, report
from workers.engines.mt.apertium import ApertiumTranslator


def test_every_sentence_has_a_reference_in_each_language() -> None:
    about, sentences = mt_quality.load_sentences()
    assert len(sentences) >= 30 and "by hand" in about
    assert all(s.keys() == {"en", "es", "pt"} and all(v.strip() for v in s.values()) for s in sentences)
    assert len({s["en"] for s in sentences}) == len(sentences)  # no sentence twice


def test_the_scorer_ranks_a_worse_translation_lower() -> None:
    references = ["Buenos días a todos.", "El presupuesto está listo."]
    perfect = mt_quality.corpus_scores(references, references)
    close = mt_quality.corpus_scores(["Buenos días a todo el mundo.", "El presupuesto ya está listo."], references)
    wrong = mt_quality.corpus_scores(["Good morning everyone.", "The budget is ready."], references)
    assert perfect == (100.0, 100.0)
    assert perfect[0] > close[0] > wrong[0] >= 0


def test_apertium_is_scored_and_reported(tmp_path: Path) -> None:
    _, sentences = mt_quality.load_sentences()
    translator = ApertiumTranslator()
    try:
        result, examples = mt_quality.score(translator, sentences[:5], "en", "es")
    finally:
        translator.close()
    assert (result.engine, result.source, result.target, result.sentences) == ("apertium", "en", "es", 5)
    assert 10 < result.chrf < 100 and result.ms_per_sentence > 0
    assert [e["reference"] for e in examples] == [s["es"] for s in sentences[3:5]]
    measured = {"references": "by hand", "scores": [vars(result)], "skipped": {"bergamot": "not installed"}}
    (tmp_path / "mt-quality.json").write_text(json.dumps(measured))
    text = report.run(tmp_path, tmp_path / "RESULTS.md")
    assert "## Translation quality (chrF)" in text and f"| en->es | apertium | {result.chrf} |" in text
    assert "- bergamot: not installed" in text
