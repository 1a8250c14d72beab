"""The CTranslate2 MT engine on tiny random models in the real layouts, converted by CTranslate2's own converter
through `babelroom models fetch` (a local dir: no download), then run int8 through the engine, the MT stage and
the real MT worker process on a real redis-server.

The checkpoints are built here the way the hub's are laid out: OPUS-MT Marian dirs (source.spm, target.spm,
vocab.json, tokenizer_config.json, config.json, weights) with the real `MarianTokenizer`, one pair each or
multi-target with >>xx<< tokens; and an NLLB-200 dir (sentencepiece.bpe.model beside the real `NllbTokenizer`).
The SentencePiece models are trained here on a few meeting phrases. The weights are random: this proves loading,
tokenization, language forcing, routing, batching and the worker's contract, not translation quality
(`bench mt-quality` measures that on real models where they are installed).

Not covered: M2M100. CTranslate2 4.8's converter under transformers 5 leaves M2M100's __xx__ language tokens out
of the vocabulary it writes (`models fetch` refuses such a model, see babelroom/models.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from babelroom.cli import main
from babelroom.models import installed_models
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import Transcript, Translation
from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import MtOptions, Request, translate_all
from workers.engines.mt.ctranslate2 import Ctranslate2Translator, mt_cache
from workers.mt import MtStage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PHRASES = (
    "good morning everyone", "thank you for joining the meeting", "the budget is ready", "can you hear me",
    "buenos días a todos", "gracias por venir a la reunión", "el presupuesto está listo", "me oyes",
    "bonjour à tous", "merci d'être venus",
)  # fmt: skip
MAX_TOKENS = 6


def train_spm(path: Path, vocab_size: int, model_type: str = "unigram") -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(PHRASES * 10), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    path.write_bytes(model.getvalue())


def seeded(model: Any) -> Any:
    import torch

    with torch.no_grad():  # the same random weights on every run
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.5)
    return model


def tiny(config_class: Any, vocab_size: int, **ids: int) -> Any:
    return config_class(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=512, **ids,
    )  # fmt: skip


def marian_checkpoint(model_dir: Path, targets: tuple[str, ...] = ()) -> Path:
    """An OPUS-MT dir; a multi-target one (opus-mt-en-ROMANCE) has a >>xx<< token per target language. Its EOS
    is biased off, so every row decodes MAX_TOKENS pieces of ordinary text."""
    import transformers

    model_dir.mkdir(parents=True)
    for name in ("source.spm", "target.spm"):
        train_spm(model_dir / name, vocab_size=48)
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(model_dir / "source.spm"))
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in (pieces.id_to_piece(i) for i in range(pieces.get_piece_size())):
        vocab.setdefault(piece, len(vocab))
    vocab.pop("<s>", None)
    vocab = {token: i for i, token in enumerate([*vocab, *(f">>{t}<<" for t in targets), "<pad>"])}
    (model_dir / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.MarianTokenizer(
        str(model_dir / "source.spm"), str(model_dir / "target.spm"), str(model_dir / "vocab.json")
    )
    config = tiny(
        transformers.MarianConfig, len(tokenizer), decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = seeded(transformers.MarianMTModel(config))
    model.final_logits_bias[0, tokenizer.eos_token_id] = -1e4
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def nllb_checkpoint(model_dir: Path) -> Path:
    """An NLLB-200 dir: sentencepiece.bpe.model (BPE, as NLLB's) and the real `NllbTokenizer` over the same pieces,
    knowing three languages."""
    import sentencepiece as spm
    import transformers

    model_dir.mkdir(parents=True)
    train_spm(model_dir / "sentencepiece.bpe.model", vocab_size=48, model_type="bpe")
    pieces = spm.SentencePieceProcessor(model_file=str(model_dir / "sentencepiece.bpe.model"))
    words = [pieces.id_to_piece(i) for i in range(3, pieces.get_piece_size())]  # after <unk>, <s>, </s>
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words])}
    codes = ["eng_Latn", "spa_Latn", "fra_Latn"]
    tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[], extra_special_tokens=codes)
    config = tiny(
        transformers.M2M100Config, len(tokenizer), decoder_start_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    seeded(transformers.M2M100ForConditionalGeneration(config)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding three converted models, each put there by `babelroom models fetch <local dir>`."""
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    cache = tmp_path_factory.mktemp("cache")
    sources = [
        marian_checkpoint(checkpoints / "opus-mt-en-es"),
        marian_checkpoint(checkpoints / "opus-mt-es-en"),
        marian_checkpoint(checkpoints / "opus-mt-en-ROMANCE", targets=("es", "fr", "it")),
        nllb_checkpoint(checkpoints / "tiny-nllb-200"),
    ]
    env = {"BABELROOM_MODEL_CACHE": str(cache)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for source in sources:
            assert main(["models", "fetch", str(source)]) == 0
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return cache


def options(cache: Path, model: str = "") -> MtOptions:
    return MtOptions(engine="ctranslate2", model=model, cache_dir=str(cache), device="cpu", max_new_tokens=MAX_TOKENS)


def spy_batches(translator: Ctranslate2Translator) -> list[tuple[str, list[list[str]], Any]]:
    """Record each model's translate_batch call: (model dir name, source tokens, target prefixes)."""
    calls: list[tuple[str, list[list[str]], Any]] = []
    for model in translator.models:
        real: Callable[..., Any] = model.translator.translate_batch

        def spy(sources: Any, *args: Any, _real: Any = real, _name: str = model.dir.name, **kwargs: Any) -> Any:
            calls.append((_name, sources, kwargs.get("target_prefix")))
            return _real(sources, *args, **kwargs)

        model.translator = _Wrapped(model.translator, spy)
    return calls


class _Wrapped:
    def __init__(self, real: Any, translate_batch: Callable[..., Any]) -> None:
        self.real, self.translate_batch = real, translate_batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_fetch_converts_into_the_cache_in_the_real_layout(cache: Path) -> None:
    converted = mt_cache(cache)
    assert sorted(p.name for p in converted.iterdir()) == [
        "opus-mt-en-ROMANCE",
        "opus-mt-en-es",
        "opus-mt-es-en",
        "tiny-nllb-200",
    ]
    marian = {p.name for p in (converted / "opus-mt-en-es").iterdir()}
    assert {"model.bin", "config.json", "shared_vocabulary.json", "source.spm", "target.spm"} <= marian
    assert {">>es<<", ">>fr<<"} <= set(
        json.loads((converted / "opus-mt-en-ROMANCE/shared_vocabulary.json").read_text())
    )
    listed = {m.name: m for m in installed_models(cache) if m.stage == "mt"}
    assert listed["opus-mt-en-es (CTranslate2)"].size_bytes > 0


def test_pairs_route_to_their_models_and_every_target_is_one_batch(cache: Path) -> None:
    translator = Ctranslate2Translator(options(cache, model="opus-mt-en-es,opus-mt-es-en,opus-mt-en-ROMANCE"))
    assert translator.name == "ctranslate2:opus-mt-en-es, opus-mt-es-en, opus-mt-en-ROMANCE (cpu, int8)"
    assert [m.family for m in translator.models] == ["marian"] * 3
    assert translator.supports("en", "es") and translator.supports("es", "en") and translator.supports("en", "fr")
    assert not translator.supports("en", "xx")
    calls = spy_batches(translator)
    results = translate_all(translator, "good morning everyone", "en", ["es", "fr", "de", "en"])
    assert [(results[t].route, bool(results[t].note)) for t in ("es", "fr", "de", "en")] == [
        (("en", "es"), False), (("en", "fr"), False), ((), True), (("en",), False),
    ]  # fmt: skip
    assert len(results["es"].text.split()) >= 1 and results["en"].text == "good morning everyone"
    by_model = {name: (sources, prefixes) for name, sources, prefixes in calls}
    assert sorted(by_model) == ["opus-mt-en-ROMANCE", "opus-mt-en-es"] and len(calls) == 2  # one call per model
    sources, prefixes = by_model["opus-mt-en-es"]
    assert sources == [[*translator.models[0].source_spm.encode("good morning everyone", out_type=str), "</s>"]]
    assert prefixes is None
    [romance] = by_model["opus-mt-en-ROMANCE"][0]
    assert romance[0] == ">>fr<<" and romance[1:] == sources[0]
    assert ">>" not in results["fr"].text


def test_two_utterances_and_their_targets_in_one_call_per_model(cache: Path) -> None:
    translator = Ctranslate2Translator(options(cache, model="opus-mt-en-ROMANCE,opus-mt-es-en"))
    calls = spy_batches(translator)
    stage = MtStage(translator=translator)
    transcripts = [
        Transcript(room="r", speaker="a", seq=1, language="en", targets=("es", "fr"), text="the budget is ready"),
        Transcript(room="r", speaker="b", seq=1, language="es", targets=("en",), text="me oyes"),
    ]
    outcomes = stage.process_batch(transcripts)
    assert [[m.language for m in o] for o in outcomes if isinstance(o, list)] == [["es", "fr"], ["en"]]  # type: ignore[attr-defined]
    assert [(name, [s[0] for s in sources]) for name, sources, _ in calls] == [
        ("opus-mt-en-ROMANCE", [">>es<<", ">>fr<<"]),  # both targets of the first utterance: one call
        ("opus-mt-es-en", ["▁me"]),
    ]


def test_nllb_forces_each_rows_target_language_in_one_call(cache: Path) -> None:
    translator = Ctranslate2Translator(options(cache, model="tiny-nllb-200"))
    [model] = translator.models
    assert model.family == "nllb" and model.languages == {"en", "es", "fr"}
    assert translator.supports("es", "fr") and not translator.supports("en", "de")
    calls = spy_batches(translator)
    results = translator.translate_batch(
        [Request("good morning everyone", "en", ("es", "fr")), Request("buenos días a todos", "es", ("en",))]
    )
    [(_, sources, prefixes)] = calls
    assert [s[0] for s in sources] == ["eng_Latn", "eng_Latn", "spa_Latn"] and all(s[-1] == "</s>" for s in sources)
    assert prefixes == [["spa_Latn"], ["fra_Latn"], ["eng_Latn"]]
    texts = [r.text for rows in results for r in rows.values()]
    assert len(texts) == 3 and not any("_Latn" in t for t in texts)  # the forced language token is not shown


def test_marian_decodes_ordinary_text_to_the_length_cap(cache: Path) -> None:
    translator = Ctranslate2Translator(options(cache, model="opus-mt-en-es"))
    sentence = "thank you for joining the meeting"
    text = translator.translate(sentence, "en", ["es"])["es"].text
    model = translator.models[0]
    source = [*model.source_spm.encode(sentence, out_type=str), "</s>"]
    [hypothesis] = model.translator.translate_batch([source], max_decoding_length=MAX_TOKENS)[0].hypotheses
    assert len(hypothesis) == MAX_TOKENS  # the EOS was biased off: the decoder ran to max_new_tokens
    assert text == model.target_spm.decode(hypothesis).strip() and text and "<unk>" not in text


def test_an_empty_cache_or_a_missing_model_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="BABELROOM_ALLOW_DOWNLOAD=1 babelroom models fetch"):
        Ctranslate2Translator(options(tmp_path))
    with pytest.raises(EngineUnavailable, match="no CTranslate2 model"):
        Ctranslate2Translator(options(tmp_path, model="opus-mt-en-de"))


def test_fetch_without_permission_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BABELROOM_MODEL_CACHE", str(tmp_path))
    monkeypatch.delenv("BABELROOM_ALLOW_DOWNLOAD", raising=False)
    assert main(["models", "fetch", "Helsinki-NLP/opus-mt-en-es"]) == 2
    err = capsys.readouterr().err
    assert "downloading is off" in err and "BABELROOM_ALLOW_DOWNLOAD=1" in err
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing half-made


def test_models_lists_what_is_installed(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BABELROOM_MODEL_CACHE", str(cache))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    print(out)
    lines = {line.split()[0] for line in out.splitlines()[1:]}
    assert {"asr", "mt", "tts"} <= lines
    assert "Apertium en->es, es->en" in out and f"{mt_cache(cache) / 'opus-mt-en-es'}" in out


async def test_the_mt_worker_translates_with_the_converted_models(
    cache: Path, redis_url: str, stream_prefix: str
) -> None:
    """`babelroom worker mt` with BABELROOM_MT_ENGINE=ctranslate2 finds every model in the cache and answers a
    transcript with one Translation per target."""
    env = {
        **os.environ, "REDIS_URL": redis_url, "BABELROOM_STREAM_PREFIX": stream_prefix, "PYTHONPATH": str(ROOT),
        "BABELROOM_MT_ENGINE": "ctranslate2", "BABELROOM_MODEL_CACHE": str(cache), "BABELROOM_MT_DEVICE": "cpu",
    }  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-m", "babelroom.cli", "worker", "mt"], env=env, cwd=ROOT)
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, block_ms=100))
    try:
        transcript = Transcript(
            room="r1",
            speaker="ana",
            seq=3,
            language="en",
            targets=("es", "fr", "de"),
            text="can you hear me",
        ).stamped("asr")
        await bus.publish(transcript)
        deadline = time.monotonic() + 120
        while len(found := await bus.tail("tts", last_id="0", count=10)) < 3:
            assert worker.poll() is None, "the MT worker exited"
            assert time.monotonic() < deadline, f"translations within 120 s: {found}"
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await bus.close()
    translations = [d.message for d in found]
    assert all(isinstance(t, Translation) for t in translations)
    by_language = {t.language: t for t in translations if isinstance(t, Translation)}
    assert sorted(by_language) == ["de", "es", "fr"]
    assert by_language["es"].text and not by_language["es"].note and by_language["fr"].source_text == "can you hear me"
    assert "en->de" in by_language["de"].note  # no model does it: the original, with a note
    assert [s for s, _ in by_language["es"].stamps] == ["asr", "mt.start", "mt"]
