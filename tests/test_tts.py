"""TTS: espeak-ng and the bundled Piper voice, voice config, WSOLA duration fitting that keeps the pitch,
speaker-adaptive pitch, and the stage's message handling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.audio import Samples, median_f0_hz, pcm16_to_float, resample
from pipeline.messages import SAMPLE_RATE, Phoneme, Service, SynthesizedSpeech, Translation
from workers.engines.tts.base import Audio, TtsOptions
from workers.engines.tts.espeak import EspeakSynthesizer, phonemes_from_starts
from workers.engines.tts.piper import PiperSynthesizer, piper_phonemes
from workers.engines.tts.registry import VoiceRouter, parse_voices
from workers.engines.tts.render import fit_tempo, render, retime, shift_pitch, time_stretch, trim_silence
from workers.stage import PermanentError
from workers.tts import TtsStage

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def router() -> VoiceRouter:
    voices = VoiceRouter(TtsOptions())
    voices.load()
    return voices


@pytest.fixture(scope="module")
def piper_speech(router: VoiceRouter) -> Samples:
    audio = router.synthesize("We need to find a better solution for our customers.", "en")
    return trim_silence(resample(audio.samples, audio.sample_rate, SR), SR)


def translation(text: str, language: str = "es", seconds: float = 2.0, f0: float = 0.0, note: str = "") -> Translation:
    return Translation(
        room="r1", speaker="carol", seq=3, stamps=(("segment", 1.0), ("asr", 2.0), ("mt", 3.0)),
        source_language="en", language=language, source_text="The house is very big.", text=text, note=note,
        start_sample=SR, end_sample=SR + int(seconds * SR), speaker_f0_hz=f0,
    )  # fmt: skip


@pytest.mark.slow
def test_default_voices(router: VoiceRouter, piper_speech: Samples) -> None:
    assert router.engine_name("en").startswith("piper:en_US-joe") and router.engine_name("es") == "espeak-ng"
    assert 2.0 < piper_speech.size / SR < 5.0 and 70 < median_f0_hz(piper_speech) < 160
    es = router.synthesize("La casa es muy grande.", "es")
    assert es.sample_rate == 22050 and es.duration_s > 0.8
    assert router.supports("gl") and router.supports("de") and not router.supports("xx")


def test_voice_spec_parsing() -> None:
    assert parse_voices("en=piper:/v/x.onnx, es=espeak:es-419 ,de=vits:facebook/mms-tts-deu") == {
        "en": ("piper", "/v/x.onnx"),
        "es": ("espeak", "es-419"),
        "de": ("vits", "facebook/mms-tts-deu"),
    }
    for bad in ("en=festival:x", "en", "de=vits"):
        with pytest.raises(ValueError):
            parse_voices(bad)
    o = TtsOptions.from_env({"BABELROOM_TTS_VOICES": "es=espeak:es", "BABELROOM_TTS_MAX_TEMPO": "1.3"})
    assert (o.voices, o.max_tempo, o.fit_duration) == ("es=espeak:es", 1.3, True)


@pytest.mark.slow
@pytest.mark.parametrize("tempo", [0.75, 1.25])
def test_time_stretch_keeps_pitch(piper_speech: Samples, tempo: float) -> None:
    stretched = time_stretch(piper_speech, tempo)
    f0_in, f0_out = median_f0_hz(piper_speech), median_f0_hz(stretched)
    durations = f"{piper_speech.size / SR:.2f} s -> {stretched.size / SR:.2f} s"
    print(f"\ntempo {tempo}: {durations}, F0 {f0_in:.0f} -> {f0_out:.0f} Hz")
    assert abs(stretched.size - piper_speech.size / tempo) <= 1
    assert abs(f0_out / f0_in - 1) < 0.1  # a resampling speed-up would move it by 1/tempo


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.8, 1.3])
def test_shift_pitch_moves_f0_and_keeps_duration(piper_speech: Samples, ratio: float) -> None:
    shifted = shift_pitch(piper_speech, ratio)
    f0_in, f0_out = median_f0_hz(piper_speech), median_f0_hz(shifted)
    print(f"\npitch x{ratio}: F0 {f0_in:.0f} -> {f0_out:.0f} Hz (want {f0_in * ratio:.0f})")
    assert shifted.size == piper_speech.size
    assert abs(f0_out / (f0_in * ratio) - 1) < 0.08


def test_fit_tempo_is_clamped() -> None:
    assert fit_tempo(3.0, 2.0) == 1.5 and fit_tempo(6.0, 2.0) == 1.5  # too long: speed up, at most 1.5x
    assert fit_tempo(1.0, 2.0) == 0.75 and fit_tempo(1.8, 2.0) == pytest.approx(0.9)
    assert fit_tempo(2.0, 0.0) == 1.0


def test_f0_of_a_tone() -> None:
    t = np.arange(SR) / SR
    assert median_f0_hz((0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)) == pytest.approx(150, rel=0.01)
    assert median_f0_hz(np.zeros(SR, np.float32)) == 0.0


@pytest.mark.slow
def test_stage_fits_duration_and_copies_fields(router: VoiceRouter) -> None:
    stage = TtsStage(voices=router)
    raw = router.synthesize("La casa es muy grande.", "es")
    natural = trim_silence(resample(raw.samples, raw.sample_rate, SR), SR).size / SR
    target = natural / 1.2  # a 20 % faster source: fitted exactly (within the 0.75-1.5 bounds)
    (out,) = stage.process(dataclasses.replace(translation("La casa es muy grande.", seconds=target), has_frames=True))
    assert isinstance(out, SynthesizedSpeech) and out.has_frames
    assert out.phonemes and out.phonemes[-1].end_s <= len(out.pcm) / 2 / SR
    got = pcm16_to_float(out.pcm).size / SR
    print(f"\nnatural {natural:.2f} s, target {target:.2f} s, fitted {got:.2f} s")
    assert got == pytest.approx(target, abs=0.02)
    assert (out.room, out.speaker, out.seq, out.language, out.sample_rate) == ("r1", "carol", 3, "es", SR)
    assert (out.start_sample, out.end_sample, out.source_text) == (SR, SR + int(target * SR), "The house is very big.")
    assert [s for s, _ in out.stamps] == ["segment", "asr", "mt", "tts"]
    (far,) = stage.process(translation("La casa es muy grande.", seconds=natural / 3))  # clamped at 1.5x
    assert pcm16_to_float(far.pcm).size / SR == pytest.approx(natural / 1.5, abs=0.02)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_stage_moves_pitch_toward_speaker_when_opted_in(router: VoiceRouter) -> None:
    stage = TtsStage(voices=router)
    text = "We need to find a better solution for our customers."
    (plain,) = stage.process(translation(text, "en", seconds=0.0))
    (adapted,) = stage.process(translation(text, "en", seconds=0.0, f0=200.0))
    f0_plain = median_f0_hz(pcm16_to_float(plain.pcm))  # type: ignore[attr-defined]
    f0_adapted = median_f0_hz(pcm16_to_float(adapted.pcm))  # type: ignore[attr-defined]
    print(f"\nvoice F0 {f0_plain:.0f} Hz -> {f0_adapted:.0f} Hz toward a 200 Hz speaker")
    assert f0_plain * 1.4 < f0_adapted < 205


def test_stage_sends_empty_speech_for_untranslated_text_and_refuses_unknown_language() -> None:
    """Nothing to voice still gets an answer, so the gateway's playout does not wait for it."""
    stage = TtsStage(voices=VoiceRouter(TtsOptions(voices="")))
    untranslated = translation("The house is very big.", "de", note="no en->de translation available")
    speech_off = dataclasses.replace(translation("la casa", "es"), service=Service(speech=False))  # overload
    for message in (untranslated, translation("", "es"), speech_off):
        (speech,) = stage.process(message)
        assert isinstance(speech, SynthesizedSpeech) and speech.pcm == b"" and speech.seq == message.seq
    with pytest.raises(PermanentError, match="'xx'"):
        stage.process(translation("hola", "xx"))


def test_espeak_and_piper_engines_directly() -> None:
    espeak = EspeakSynthesizer()
    assert espeak.voice_for("pt") == "pt" and espeak.voice_for("gl") == "pt" and espeak.voice_for("zh") == "cmn"
    assert espeak.synthesize("-5 grados", "es").duration_s > 0.3  # a leading dash is text, not an option
    piper = PiperSynthesizer()
    assert piper.supports("en") and not piper.supports("es")


VOWELS = frozenset("aeiouɑæɐəɛɪʊɔʌɜøœyɒ")
STOPS = frozenset(("p", "b", "t", "d", "k", "ɡ"))


def loudness_ratio(audio: Audio) -> float:
    """Mean RMS over vowels / over the first half of stops (the closure, nearly silent): high only when
    the timings sit on the sounds they name."""

    def rms(start_s: float, end_s: float) -> float:
        a, b = int(start_s * audio.sample_rate), int(end_s * audio.sample_rate)
        return float(np.sqrt(np.mean(audio.samples[a : max(b, a + 1)] ** 2)))

    vowels = [rms(p.start_s, p.end_s) for p in audio.phonemes if p.symbol[0] in VOWELS]
    closures = [rms(p.start_s, (p.start_s + p.end_s) / 2) for p in audio.phonemes if p.symbol in STOPS]
    return float(np.mean(vowels) / max(np.mean(closures), 1e-6))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("language", "text"), [("en", "Please bring my bag, mom."), ("es", "Por favor, trae mi bolso, mamá.")]
)
def test_phoneme_timings_sit_on_the_audio_and_follow_duration_fitting(
    router: VoiceRouter, language: str, text: str
) -> None:
    raw = router.synthesize(text, language)
    fitted, info = render(raw, target_s=raw.duration_s / 1.3)
    for audio in (raw, fitted):
        starts = [p.start_s for p in audio.phonemes]
        assert starts == sorted(starts) and all(0 <= p.start_s < p.end_s <= audio.duration_s for p in audio.phonemes)
        assert {"p", "m"} <= {p.symbol for p in audio.phonemes}
    late = Audio(raw.samples, raw.sample_rate, retime(raw.phonemes, -0.06, 1.0, raw.duration_s))
    ratios = [loudness_ratio(a) for a in (raw, fitted, late)]
    print(f"\n{language}: {len(raw.phonemes)} phonemes; vowel/closure loudness raw, fitted, 60 ms late: {ratios}")
    assert ratios[0] > 1.8 and ratios[1] > 1.8 and ratios[2] < 0.5 * ratios[0]  # Piper varies run to run
    span = raw.phonemes[-1].end_s - raw.phonemes[0].start_s
    fitted_span = fitted.phonemes[-1].end_s - fitted.phonemes[0].start_s
    assert fitted_span == pytest.approx(span / info["tempo"], rel=0.02)


def test_phoneme_symbols_from_engine_events() -> None:
    espeak = phonemes_from_starts([("p", 0.0), ("ˈa", 0.05), ("", 0.2), ("m", 0.3)], 0.4)
    assert espeak == (Phoneme("p", 0.0, 0.05), Phoneme("a", 0.05, 0.2), Phoneme("m", 0.3, 0.4))
    piper = piper_phonemes([("^", 100), ("b", 100), ("ˈ", 100), ("ɑ", 100), ("ː", 100), (" ", 100), ("m", 100)], 1000)
    assert piper == [Phoneme("b", 0.1, 0.2), Phoneme("ɑː", 0.2, 0.5), Phoneme("m", 0.6, 0.7)]
    assert retime(piper, 0.1, 2.0, 0.2) == (Phoneme("b", 0.0, 0.05), Phoneme("ɑː", 0.05, 0.2))


def test_a_repeatable_piper_voice_says_the_same_text_the_same_way() -> None:
    """Piper draws VITS noise for each synthesis (the voice varies a little, as speech does); measurements that
    compare runs ask for it without (tests/test_quality.py)."""
    varied, repeatable = PiperSynthesizer(), PiperSynthesizer(repeatable=True)
    text = "Please send me the report after lunch."
    first, second = repeatable.synthesize(text, "en"), repeatable.synthesize(text, "en")
    assert np.array_equal(first.samples, second.samples) and first.phonemes == second.phonemes
    one, other = varied.synthesize(text, "en"), varied.synthesize(text, "en")
    assert one.samples.size != other.samples.size or not np.array_equal(one.samples, other.samples)
