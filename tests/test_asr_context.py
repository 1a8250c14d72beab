"""The final pass's audio context on speech the way the gateway gets it: the browser test's sentence from
espeak-ng (as tests/browser.py's fake microphone makes it), through Opus at 48 kHz and the gateway's segmenter.
The default final (fitted window, 5 beams) hears it; `babelroom bench asr-context` compares the candidates."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.asr_context import BROWSER_SENTENCE, WEBRTC_RATE, gateway_segments, opus_round_trip
from pipeline.audio import resample
from tests.speech import espeak
from workers.engines.asr.base import AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer


def test_opus_round_trip_keeps_the_speech_in_place() -> None:
    speech = resample(espeak(BROWSER_SENTENCE), 16_000, WEBRTC_RATE)
    decoded = opus_round_trip(speech)
    assert decoded.size >= speech.size and not np.array_equal(decoded[: speech.size], speech)  # lossy, not lost
    lag = int(np.argmax(np.correlate(decoded[: WEBRTC_RATE // 2 + speech.size // 4], speech[: speech.size // 4])))
    aligned = decoded[lag : lag + speech.size]
    assert lag < WEBRTC_RATE // 50 and np.corrcoef(aligned, speech)[0, 1] > 0.8  # Opus delays by a few ms


@pytest.mark.slow
def test_default_final_hears_the_browser_sentence_through_opus() -> None:
    segments = gateway_segments(espeak(BROWSER_SENTENCE), "en", opus=True)
    text = " ".join(FasterWhisperRecognizer(AsrOptions()).transcribe(s).text for s in segments).lower()
    print(f"\n{len(segments)} segment(s): {text!r}")
    assert "cat" in text and "black" in text and "house" in text
