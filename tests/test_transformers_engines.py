"""The GPU-host engines on torch/transformers, run on CPU with tiny randomly initialised models: the
`TransformersTranslator` (NLLB, M2M100 and Marian families) and the VITS (MMS-TTS) synthesizer.

Each model is built here, saved with `save_pretrained` to a temporary dir and loaded through the engine the way
a user configures it (model=<dir>, device cpu, no download), then driven through its worker stage.

What this proves: the loading path (AutoTokenizer / AutoModelForSeq2SeqLM / VitsModel from a local dir under
transformers 5), the model-family detection, language support from the tokenizer's language tokens, the one-batch
translation with each row's decoder forced to its own target-language token (checked on the tokens `generate`
returns), that those tokens never leak into the text, that two translations running at once in the worker's
threads each keep their own source language (NLLB's src_lang is tokenizer state), and the stage contracts: one
`Translation` per target, a `SynthesizedSpeech` with 16 kHz PCM from a VITS voice at another sampling rate.

What it does not prove: translation or speech quality (the weights are random), fp16 on CUDA, or the
sentencepiece tokenizers of M2M100 and Marian (`M2M100Tokenizer`, `MarianTokenizer`: sentencepiece is not
installed and no .spm model is at hand), so those two families load a word-level fast tokenizer that carries
the same language tokens ("__es__", ">>es<<"). NLLB uses its real tokenizer class, `NllbTokenizer`.

The saved generation configs suppress the special tokens and hold EOS back for a few steps, so a random model
still writes some ordinary tokens to decode; the engines themselves run unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.audio import pcm16_to_float
from pipeline.messages import SAMPLE_RATE, SynthesizedSpeech, Transcript, Translation
from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import MtOptions, translate_all
from workers.engines.mt.families import NLLB_CODES
from workers.engines.mt.transformers import TransformersTranslator
from workers.engines.tts.base import TtsOptions
from workers.engines.tts.registry import VoiceRouter
from workers.engines.tts.vits import VitsSynthesizer
from workers.mt import MtStage
from workers.stage import PermanentError
from workers.tts import TtsStage

pytestmark = pytest.mark.slow

WORDS = ("hello", "world", "hola", "mundo", "bonjour", "le", "monde")
CHARS = "abcdefghijklmnopqrstuvwxyz"
NLLB_LANGUAGES = ("en", "es", "fr")  # the tiny NLLB knows these three; "de" is in NLLB_CODES but not in it
MIN_NEW_TOKENS = 3
VITS_RATE = 22_050  # not the pipeline's 16 kHz, so the stage has to resample


def tiny_seq2seq_config(transformers: Any, model_type: str, vocab_size: int, **ids: int) -> Any:
    config_class = {"m2m_100": transformers.M2M100Config, "marian": transformers.MarianConfig}[model_type]
    return config_class(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, **ids,
    )  # fmt: skip


def save_seq2seq(model: Any, tokenizer: Any, special_ids: Sequence[int], model_dir: Path) -> None:
    """Save model and tokenizer; the generation config keeps a random model off special tokens for a few steps."""
    import torch

    model.generation_config.suppress_tokens = sorted(set(special_ids) - {tokenizer.eos_token_id})
    model.generation_config.min_new_tokens = MIN_NEW_TOKENS
    with torch.no_grad():  # deterministic random weights, however the test order goes
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.5)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def word_level_tokenizer(transformers: Any, special: Sequence[str]) -> Any:
    """A fast tokenizer over WORDS, with `special` (language tokens) as special tokens; saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate([*base, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens=list(special),
    )  # fmt: skip
    assert all(tokenizer.convert_tokens_to_ids(s) != tokenizer.unk_token_id for s in special)
    return tokenizer


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    # NLLB's own tokenizer class (BPE over metaspace pieces): single characters, no merges, three languages.
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "▁", *CHARS])}
    codes = [NLLB_CODES[c] for c in NLLB_LANGUAGES]
    tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[], extra_special_tokens=codes)
    assert all(tokenizer.convert_tokens_to_ids(c) != tokenizer.unk_token_id for c in codes)
    config = tiny_seq2seq_config(
        transformers, "m2m_100", len(tokenizer), decoder_start_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model_dir = tmp_path_factory.mktemp("models") / "tiny-random-nllb"
    model = transformers.M2M100ForConditionalGeneration(config)
    save_seq2seq(model, tokenizer, tokenizer.all_special_ids, model_dir)
    return model_dir


@pytest.fixture(scope="module")
def nllb(nllb_dir: Path) -> TransformersTranslator:
    return TransformersTranslator(MtOptions(engine="transformers", model=str(nllb_dir), device="cpu", max_new_tokens=6))


def spy_generate(translator: TransformersTranslator, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record each `generate` call's inputs and output token ids."""
    calls: list[dict[str, Any]] = []
    real: Callable[..., Any] = translator.model.generate

    def generate(**kwargs: Any) -> Any:
        out = real(**kwargs)
        calls.append({**kwargs, "out": out})
        return out

    monkeypatch.setattr(translator.model, "generate", generate)
    return calls


def assert_clean_text(translator: TransformersTranslator, text: str) -> None:
    assert isinstance(text, str) and text.strip()  # random words, but words: the special tokens are suppressed
    special = set(translator.tokenizer.all_special_tokens)
    assert not any(token in text for token in special if len(token) > 2), text  # no language or control tokens


def test_nllb_loads_by_path_and_knows_its_languages(nllb: TransformersTranslator) -> None:
    assert nllb.family == "nllb" and type(nllb.tokenizer).__name__ == "NllbTokenizer"
    assert nllb.name.startswith("transformers-nllb:") and nllb.name.endswith("(cpu)")
    assert nllb.device == "cpu" and next(nllb.model.parameters()).device.type == "cpu"
    assert not nllb.model.training
    assert nllb.supports("en", "es") and nllb.supports("fr", "en")
    assert not nllb.supports("en", "de")  # deu_Latn is in NLLB_CODES but not in this model's vocabulary
    assert not nllb.supports("en", "xx") and not nllb.supports("eo", "en")  # no FLORES code mapped
    assert nllb.language_token("es") == nllb.tokenizer.convert_tokens_to_ids("spa_Latn")


def test_nllb_translates_every_target_in_one_forced_batch(
    nllb: TransformersTranslator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_generate(nllb, monkeypatch)
    results = nllb.translate("hello world", "en", ["es", "fr"])
    assert list(results) == ["es", "fr"]
    for target, result in results.items():
        assert result.route == ("en", target) and not result.note
        assert_clean_text(nllb, result.text)
    [call] = calls  # both targets in one generate call
    tok = nllb.tokenizer
    input_ids = call["input_ids"].tolist()
    assert len(input_ids) == 2 and input_ids[0] == input_ids[1]
    # NLLB's source side: [src_lang] tokens </s>, with the source language set by the engine.
    assert input_ids[0][0] == tok.convert_tokens_to_ids("eng_Latn") and input_ids[0][-1] == tok.eos_token_id
    assert tok.unk_token_id not in input_ids[0]
    out = call["out"].tolist()
    start = nllb.model.config.decoder_start_token_id
    assert [row[:2] for row in out] == [[start, tok.convert_tokens_to_ids(c)] for c in ("spa_Latn", "fra_Latn")]
    assert all(len(row) > 2 + MIN_NEW_TOKENS - 1 for row in out)  # it generated past the forced prefix
    # The source language is per call, not sticky: French in, the tokenizer's prefix follows.
    nllb.translate("bonjour le monde", "fr", ["en"])
    assert calls[-1]["input_ids"][0, 0].item() == tok.convert_tokens_to_ids("fra_Latn")


def test_nllb_through_translate_all_and_the_mt_stage(nllb_dir: Path) -> None:
    stage = MtStage(MtOptions(engine="transformers", model=str(nllb_dir), device="cpu", max_new_tokens=6))
    stage.load()  # as the worker does at start: the engine comes from the options alone
    assert stage.engine_name.startswith("transformers-nllb:")
    transcript = Transcript(
        room="r1", speaker="bob", seq=7, stamps=(("segment", 1.0), ("asr", 2.0)), language="en",
        targets=("es", "fr", "en", "de"), text="hello world", start_sample=100, end_sample=48_100, speaker_f0_hz=120.0,
    )  # fmt: skip
    out = stage.process(transcript)
    assert [type(m) for m in out] == [Translation] * 4
    translations = [m for m in out if isinstance(m, Translation)]
    assert [t.language for t in translations] == ["es", "fr", "en", "de"]
    by_language = {t.language: t for t in translations}
    for target in ("es", "fr"):
        t = by_language[target]
        assert t.text.strip() and not t.note and t.source_text == "hello world" and t.source_language == "en"
        assert (t.room, t.speaker, t.seq, t.start_sample, t.end_sample) == ("r1", "bob", 7, 100, 48_100)
        assert t.speaker_f0_hz == 120.0 and [s for s, _ in t.stamps] == ["segment", "asr", "mt"]
    assert by_language["en"].text == "hello world" and not by_language["en"].note  # same language: passed through
    assert by_language["de"].text == "hello world" and "en->de" in by_language["de"].note  # not in the model
    [blank] = stage.process(Transcript(room="r1", speaker="bob", seq=8, language="en", targets=("es",), text=" "))
    assert isinstance(blank, Translation) and blank.text == " " and not blank.note  # nothing to translate
    with pytest.raises(PermanentError):
        translate_all(stage.translator, "hello", "en", ["xx"])  # type: ignore[arg-type]


def test_m2m100_forces_its_language_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    tokenizer = word_level_tokenizer(transformers, ["__en__", "__es__", "__fr__"])
    config = tiny_seq2seq_config(
        transformers, "m2m_100", len(tokenizer), decoder_start_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model_dir = tmp_path / "tiny-random-m2m100"
    model = transformers.M2M100ForConditionalGeneration(config)
    save_seq2seq(model, tokenizer, tokenizer.all_special_ids, model_dir)
    m2m = TransformersTranslator(MtOptions(engine="transformers", model=str(model_dir), device="cpu", max_new_tokens=6))
    assert m2m.family == "m2m100" and m2m.name.startswith("transformers-m2m100:")
    assert m2m.supports("en", "fr") and m2m.supports("es", "en") and not m2m.supports("en", "de")
    calls = spy_generate(m2m, monkeypatch)
    results = m2m.translate("hello world", "en", ["fr", "es"])
    assert list(results) == ["fr", "es"] and all(r.route == ("en", t) for t, r in results.items())
    for result in results.values():
        assert_clean_text(m2m, result.text)
    [call] = calls
    start = m2m.model.config.decoder_start_token_id
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("__fr__", "__es__")]
    assert [row[:2] for row in call["out"].tolist()] == [[start, i] for i in ids]


def test_marian_single_pair_and_multi_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    tokenizer = word_level_tokenizer(transformers, [">>es<<", ">>fr<<"])
    config = tiny_seq2seq_config(
        transformers, "marian", len(tokenizer), decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = transformers.MarianMTModel(config)
    pair_dir, multi_dir = tmp_path / "opus-mt-en-es", tmp_path / "opus-mt-en-ROMANCE"
    for model_dir in (pair_dir, multi_dir):
        save_seq2seq(model, tokenizer, tokenizer.all_special_ids, model_dir)

    pair = TransformersTranslator(MtOptions(engine="transformers", model=str(pair_dir), device="cpu", max_new_tokens=6))
    assert pair.family == "marian" and pair.marian_pair == ("en", "es")
    assert pair.supports("en", "es") and not pair.supports("en", "fr") and not pair.supports("es", "en")
    calls = spy_generate(pair, monkeypatch)
    [(target, result)] = pair.translate("hello world", "en", ["es"]).items()
    assert target == "es" and result.route == ("en", "es")
    assert_clean_text(pair, result.text)
    assert calls[0]["input_ids"][0].tolist()[:2] == [tokenizer.convert_tokens_to_ids(w) for w in ("hello", "world")]

    multi = TransformersTranslator(
        MtOptions(engine="transformers", model=str(multi_dir), device="cpu", max_new_tokens=6)
    )
    assert multi.family == "marian" and multi.marian_pair is None and multi.supports("en", "fr")
    calls = spy_generate(multi, monkeypatch)
    results = multi.translate("hello world", "en", ["fr", "es"])
    assert list(results) == ["fr", "es"]
    for result in results.values():
        assert_clean_text(multi, result.text)
    [call] = calls  # one batch; each row names its target with the >>xx<< prefix
    assert [row[0] for row in call["input_ids"].tolist()] == [
        tokenizer.convert_tokens_to_ids(t) for t in (">>fr<<", ">>es<<")
    ]


@pytest.fixture(scope="module")
def vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import json

    import torch
    import transformers

    model_dir = tmp_path_factory.mktemp("models") / "tiny-random-mms-tts"
    model_dir.mkdir()
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", " ", "'", *CHARS])}  # MMS: characters, <pad> is blank
    (model_dir / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.VitsTokenizer(str(model_dir / "vocab.json"), language="spa", phonemize=False)
    config = transformers.VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, flow_size=16,
        spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=[8, 8], upsample_kernel_sizes=[16, 16],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], duration_predictor_filter_channels=16,
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1, sampling_rate=VITS_RATE, pad_token_id=vocab["<pad>"],
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.VitsModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def test_vits_loads_by_path_and_synthesizes_at_the_model_rate(vits_dir: Path) -> None:
    import torch

    vits = VitsSynthesizer(str(vits_dir), "es", device="cpu")
    assert vits.name.startswith("vits:") and vits.name.endswith("(cpu)") and vits.device == "cpu"
    assert vits.supports("es") and not vits.supports("en")  # one model per language
    torch.manual_seed(0)  # VITS samples its noise and durations: the same draws on every run
    short, long = vits.synthesize("hola", "es"), vits.synthesize("hola mundo hola mundo", "es")
    for audio in (short, long):
        assert audio.sample_rate == VITS_RATE
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1 and audio.samples.size > 0
        assert np.all(np.isfinite(audio.samples)) and audio.samples.size % 64 == 0  # frames x the 8*8 upsampling
    assert long.samples.size > short.samples.size  # durations come from the text, one or more frames per token
    nothing = vits.synthesize("123", "es")  # no character the voice has: no tokens, no audio, no crash
    assert nothing.samples.size == 0 and nothing.sample_rate == VITS_RATE


def test_vits_voice_through_the_tts_stage(vits_dir: Path) -> None:
    stage = TtsStage(TtsOptions(voices=f"es=vits:{vits_dir}", device="cpu"))
    stage.load()
    assert stage.engine_name("es").startswith("vits:")
    translation = Translation(
        room="r1", speaker="bob", seq=7, stamps=(("segment", 1.0), ("asr", 2.0), ("mt", 3.0)), source_language="en",
        language="es", source_text="hello world", text="hola mundo", start_sample=0, end_sample=SAMPLE_RATE,
    )  # fmt: skip
    [speech] = stage.process(translation)
    assert isinstance(speech, SynthesizedSpeech) and speech.language == "es" and speech.text == "hola mundo"
    assert speech.sample_rate == SAMPLE_RATE and speech.pcm and len(speech.pcm) % 2 == 0
    samples = pcm16_to_float(speech.pcm)
    assert samples.size > 0 and np.all(np.abs(samples) <= 1.0)
    assert [s for s, _ in speech.stamps] == ["segment", "asr", "mt", "tts"]
    assert isinstance(VoiceRouter(TtsOptions(voices=f"es=vits:{vits_dir}")).engine("es"), VitsSynthesizer)


def test_vits_voices_work_without_espeak_ng(vits_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A GPU host with a voice for every language needs no espeak-ng; any other language is refused clearly."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
    router = VoiceRouter(TtsOptions(voices=f"es=vits:{vits_dir}", device="cpu"))
    assert router.synthesize("hola mundo", "es").samples.size > 0
    assert router.supports("es") and not router.supports("fr")
    with pytest.raises(EngineUnavailable, match="no voice for 'fr'"):
        router.synthesize("bonjour", "fr")
    with pytest.raises(EngineUnavailable, match="espeak-ng is not installed"):
        VoiceRouter(TtsOptions(voices=""))  # no voices configured: espeak-ng is every language's voice


class RendezvousTokenizer:
    """The engine's tokenizer, but each encode waits (briefly) for a second caller: the worker runs messages in
    concurrent threads, and this makes two translations overlap right between choosing and using src_lang."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "barrier", threading.Barrier(2, timeout=0.5))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return self.real(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)


def test_nllb_concurrent_translations_keep_their_own_source_language(
    nllb: TransformersTranslator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_generate(nllb, monkeypatch)
    monkeypatch.setattr(nllb, "tokenizer", RendezvousTokenizer(nllb.tokenizer))
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(nllb.translate, text, source, ["es"]) for text, source in [("hello", "en"), ("le", "fr")]]
        assert all(job.result(timeout=30)["es"].route[1] == "es" for job in jobs)
    assert len(calls) == 2
    first_tokens = sorted(call["input_ids"][0, 0].item() for call in calls)
    assert first_tokens == sorted(nllb.tokenizer.convert_tokens_to_ids(c) for c in ("eng_Latn", "fra_Latn"))
