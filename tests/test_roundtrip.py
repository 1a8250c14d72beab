"""Acceptance: English spoken by the Piper voice -> ASR (Whisper base) -> Apertium en->es -> espeak-ng es ->
ASR (Whisper base, es) recovers at least 60 % of the Spanish words of the MT output."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import float_to_pcm16, pcm16_to_float, read_wav, resample, write_wav
from pipeline.messages import SAMPLE_RATE, SpeechSegment, SynthesizedSpeech, Transcript, Translation
from workers.asr import AsrStage
from workers.engines.asr.base import AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.mt.apertium import ApertiumTranslator
from workers.engines.tts.base import TtsOptions
from workers.engines.tts.piper import PiperSynthesizer
from workers.engines.tts.registry import VoiceRouter
from workers.mt import MtStage
from workers.translate_file import translate_file
from workers.tts import TtsStage

SENTENCE = "We need to find a better solution for our customers before the end of the year."


def words(text: str) -> list[str]:
    return [w.strip(".,;:!?¿¡\"'").lower() for w in text.split() if w.strip(".,;:!?¿¡\"'")]


@pytest.fixture(scope="module")
def english_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio = PiperSynthesizer().synthesize(SENTENCE, "en")
    samples = np.concatenate(
        [np.zeros(SAMPLE_RATE // 4, np.float32), resample(audio.samples, audio.sample_rate, SAMPLE_RATE)]
    )
    path = tmp_path_factory.mktemp("roundtrip") / "english.wav"
    write_wav(path, samples)
    return path


@pytest.mark.slow
def test_round_trip_recovers_spanish_words(english_wav: Path) -> None:
    base = FasterWhisperRecognizer(AsrOptions())
    asr, mt = AsrStage(recognizer=base), MtStage(translator=ApertiumTranslator())
    tts = TtsStage(voices=VoiceRouter(TtsOptions()))
    samples = read_wav(english_wav)
    segment = SpeechSegment(
        room="r", speaker="s", seq=0, language="en", targets=("es",),
        start_sample=0, end_sample=samples.size, pcm=float_to_pcm16(samples),
    )  # fmt: skip
    times: dict[str, float] = {}

    def timed(name: str, run: object) -> object:
        started = time.perf_counter()
        out = run()  # type: ignore[operator]
        times[name] = time.perf_counter() - started
        return out[0]

    transcript = timed("asr en", lambda: asr.process(segment))
    assert isinstance(transcript, Transcript)
    translation = timed("mt en->es", lambda: mt.process(transcript))
    assert isinstance(translation, Translation)
    speech = timed("tts es", lambda: tts.process(translation))
    assert isinstance(speech, SynthesizedSpeech)
    spanish = pcm16_to_float(speech.pcm)
    back_segment = SpeechSegment(
        room="r", speaker="s", seq=1, language="es", start_sample=0, end_sample=spanish.size, pcm=speech.pcm
    )
    back = timed("asr es", lambda: asr.process(back_segment))
    assert isinstance(back, Transcript)
    expected, heard = Counter(words(translation.text)), Counter(words(back.text))
    recovered = sum((expected & heard).values()) / sum(expected.values())
    print(f"\nspoken (piper en, {samples.size / SAMPLE_RATE:.2f} s): {SENTENCE!r}")
    print(f"asr en   : {transcript.text!r}")
    print(f"mt en->es: {translation.text!r}")
    fitted = f"{spanish.size / SAMPLE_RATE:.2f} s, fitted to {samples.size / SAMPLE_RATE:.2f} s"
    print(f"tts es   : espeak-ng speech, {fitted}")
    print(f"asr es   : {back.text!r}")
    print(f"recovered {recovered:.0%} of the Spanish words;", ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    assert recovered >= 0.6


@pytest.mark.slow
def test_translate_file_writes_result_and_speech(english_wav: Path, tmp_path: Path) -> None:
    result = translate_file(english_wav, "en", "es", tmp_path / "out", {})
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    print(f"\n{json.dumps(saved['timings'])} {saved['engines']}")
    assert saved == json.loads(json.dumps(result))
    assert "soluci" in saved["translation"].lower() and "customers" in saved["transcript"].lower()
    assert set(saved["timings"]) >= {"asr", "mt", "tts"} and saved["engines"]["mt"] == "apertium"
    assert saved["engines"]["asr"].startswith("faster-whisper:base") and saved["engines"]["tts"] == "espeak-ng"
    speech = read_wav(tmp_path / "out" / "speech.wav")
    assert speech.size / SAMPLE_RATE == pytest.approx(saved["speech_s"], abs=0.01) and saved["speech_s"] > 1.0
