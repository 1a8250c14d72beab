"""Which audio context should a final ASR pass use? Whisper's full 30 s window against fitted windows.

Speech as the tests make it (tests/speech.py speaks with this module's `espeak`): the quality corpus of
tests/data/quality.json (English by the bundled Piper voice, Spanish by the espeak-ng command at 130 wpm) and
the browser test's sentence by espeak-ng at 48 kHz, straight and through an Opus encode/decode round trip
(libopus in 20 ms frames, as WebRTC sends it), cut by the gateway's segmenter. Each segment is decoded afresh
by every candidate: the full window, and fitted windows of at least N s (`BABELROOM_ASR_FIT_MIN_WINDOW_S`; 0:
the audio plus 1 s), greedy or with 5 beams. Word error rate per set, the texts, and seconds per segment, all
candidates in the same run so that a loaded machine slows them alike. `babelroom bench asr-context --out DIR` writes
DIR/asr_context.json and prints a table.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import Samples, float_to_pcm16, read_wav, resample
from pipeline.messages import SAMPLE_RATE, SpeechSegment
from pipeline.segmenter import Segmenter
from workers.engines.asr.base import FIT, FULL, AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.tts.base import Synthesizer
from workers.engines.tts.piper import PiperSynthesizer

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "quality.json"
BROWSER_SENTENCE = "the house is big and the cat is black"  # the browser tests' fake microphone says it
# Their sentence until finals were fitted: espeak-ng's "dog" at 150 wpm is ambiguous (Whisper base gives it a
# probability of 0.2-0.6 with any window), and fitted finals hear "nog" through Opus. Kept as a hard case.
HARD_SENTENCE = "the house is big and the dog is black"
FIT_WINDOWS_S = (0.0, 8.0, 12.0, 20.0)
BEAM_SIZES = (1, 5)
ESPEAK_CORPUS_WPM = 130  # as tests/test_quality.py
ESPEAK_BROWSER_WPM = 150  # as tests/browser.py's fake microphone
WEBRTC_RATE = 48_000
OPUS_FRAME = WEBRTC_RATE // 50  # 20 ms
OPUS_BIT_RATE = 32_000


def opus_round_trip(samples: Samples) -> Samples:
    """48 kHz mono through libopus and back, in 20 ms frames (stereo on the wire, as aiortc receives it)."""
    try:
        import av
    except ImportError as exc:
        raise RuntimeError("the Opus round trip needs PyAV: pip install 'babelroom[webrtc]'") from exc
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = WEBRTC_RATE, "stereo", "s16", OPUS_BIT_RATE
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = WEBRTC_RATE, "stereo"
    pcm = float_to_pcm16(np.concatenate([samples, np.zeros(-samples.size % OPUS_FRAME, np.float32)]))
    pcm16 = np.frombuffer(pcm, np.int16)
    out: list[Samples] = []
    for start in range(0, pcm16.size + OPUS_FRAME, OPUS_FRAME):  # one step past the end flushes the encoder
        frame = None
        if start < pcm16.size:
            frame = av.AudioFrame.from_ndarray(
                np.repeat(pcm16[start : start + OPUS_FRAME], 2)[None], format="s16", layout="stereo"
            )
            frame.sample_rate, frame.pts = WEBRTC_RATE, start
        for packet in encoder.encode(frame):
            out += [_mono(decoded) for decoded in decoder.decode(packet)]
    return np.concatenate(out)


def _mono(frame: Any) -> Samples:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    mono = data.mean(axis=0) if frame.format.is_planar else data.reshape(-1, channels).mean(axis=1)
    samples: Samples = (mono / 32768 if data.dtype == np.int16 else mono).astype(np.float32)
    return samples


def gateway_segments(speech_16k: Samples, language: str, opus: bool) -> list[SpeechSegment]:
    """The speech after 1 s of silence, at 48 kHz (through Opus when asked), fed to the gateway's segmenter
    20 ms at a time; the segments it closes, as the gateway publishes them (no committed words)."""
    audio = resample(np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech_16k]), SAMPLE_RATE, WEBRTC_RATE)
    audio = np.concatenate([audio, np.zeros(2 * WEBRTC_RATE, np.float32)])
    if opus:
        audio = opus_round_trip(audio)
    segmenter = Segmenter(input_rate=WEBRTC_RATE)
    closed = [
        s for start in range(0, audio.size, OPUS_FRAME) for s in segmenter.feed(audio[start : start + OPUS_FRAME])
    ]
    return [s.to_message("bench", "bench", seq, language) for seq, s in enumerate([*closed, *segmenter.flush()])]


def espeak(text: str, voice: str = "en", words_per_minute: int = ESPEAK_BROWSER_WPM) -> Samples:
    """16 kHz mono speech from the espeak-ng command: a fresh synthesizer each time, so the same waveform on
    every run (in-process libespeak-ng carries state from one sentence to the next)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text], check=True)
        return read_wav(wav)


def corpus_segment(synth: Synthesizer, text: str, language: str) -> SpeechSegment:
    audio = synth.synthesize(text, language)
    return clip_segment(resample(audio.samples, audio.sample_rate, SAMPLE_RATE), language)


def espeak_segment(text: str, language: str) -> SpeechSegment:
    return clip_segment(espeak(text, language, ESPEAK_CORPUS_WPM), language)


def clip_segment(speech: Samples, language: str) -> SpeechSegment:
    """As tests/test_quality.py hands the corpus to the recognizer: 0.2 s of silence, then the speech."""
    clip = np.concatenate([np.zeros(SAMPLE_RATE // 5, np.float32), speech])
    return SpeechSegment(
        room="bench", speaker="bench", seq=0, language=language, end_sample=clip.size, pcm=float_to_pcm16(clip)
    )


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words), case and punctuation ignored."""
    ref, hyp = (
        re.sub(r"[^\w\s']", " ", unicodedata.normalize("NFC", t.lower())).split() for t in (reference, hypothesis)
    )
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def test_sets() -> Iterator[tuple[str, list[tuple[str, list[SpeechSegment]]]]]:
    """(set name, [(reference, its segments)])."""
    data = json.loads(CORPUS.read_text())
    piper = PiperSynthesizer()
    yield "en (piper)", [(t, [corpus_segment(piper, t, "en")]) for t in data["asr_en"]]
    yield "es (espeak-ng)", [(t, [espeak_segment(t, "es")]) for t in data["asr_es"]]
    speech = espeak(BROWSER_SENTENCE, "en", ESPEAK_BROWSER_WPM)
    yield "browser sentence, Opus", [(BROWSER_SENTENCE, gateway_segments(speech, "en", opus=True))]
    yield "browser sentence, straight", [(BROWSER_SENTENCE, gateway_segments(speech, "en", opus=False))]
    hard = espeak(HARD_SENTENCE, "en", ESPEAK_BROWSER_WPM)
    yield "'dog' sentence, Opus", [(HARD_SENTENCE, gateway_segments(hard, "en", opus=True))]


def candidates() -> dict[str, AsrOptions]:
    """The full window decoded greedily (the default until this benchmark), then each fitted window and beam."""
    fitted = {
        f"fit {w:g} s, beam {b}": AsrOptions(audio_context=FIT, fit_min_window_s=w, beam_size=b)
        for b in BEAM_SIZES
        for w in FIT_WINDOWS_S
    }
    return {"full, beam 1": AsrOptions(audio_context=FULL, beam_size=1), **fitted}


def run(out_dir: Path) -> dict[str, Any]:
    model = FasterWhisperRecognizer(AsrOptions())
    sets = list(test_sets())
    results: dict[str, Any] = {}
    for name, options in candidates().items():
        model.options = options  # one loaded model; only how a final decodes changes
        results[name] = measure(model, sets)
        print(f"{name:>10}: " + ", ".join(f"{k} WER {v['wer']:.3f}" for k, v in results[name]["sets"].items()))
    report = {"machine": f"{platform.processor() or platform.machine()}, {platform.platform()}", "candidates": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "asr_context.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print_table(results)
    return report


def measure(
    model: FasterWhisperRecognizer, sets: list[tuple[str, list[tuple[str, list[SpeechSegment]]]]]
) -> dict[str, Any]:
    seconds: list[float] = []
    per_set: dict[str, Any] = {}
    for name, items in sets:
        edits = words = 0
        texts: list[str] = []
        for reference, segments in items:
            heard = []
            for segment in segments:
                started = time.perf_counter()
                heard.append(model.transcribe(segment).text)
                seconds.append(time.perf_counter() - started)
            text = " ".join(heard)
            e, n = word_errors(reference, text)
            edits, words, texts = edits + e, words + n, [*texts, text]
        per_set[name] = {"wer": round(edits / words, 3), "texts": texts}
    return {"sets": per_set, "seconds_per_segment": round(float(np.mean(seconds)), 3)}


def print_table(results: dict[str, Any]) -> None:
    full_s = results["full, beam 1"]["seconds_per_segment"]
    names = list(results["full, beam 1"]["sets"])
    print("| final pass | " + " | ".join(f"WER {n}" for n in names) + " | s/segment | vs full |")
    print("|---" * (len(names) + 3) + "|")
    for candidate, r in results.items():
        wers = " | ".join(f"{r['sets'][n]['wer']:.3f}" for n in names)
        s = r["seconds_per_segment"]
        print(f"| {candidate} | {wers} | {s:.2f} | {full_s / s:.1f}x |")
