"""Real-time factor of each stage on this machine: tau = processing time / segment duration (< 1 keeps up).

Clips are real synthesized speech (the bundled Piper voice for English, espeak-ng for Spanish), one
meeting-sized sentence each. `babelroom bench stages --out DIR` writes DIR/stages.json and prints a table."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import provenance
from pipeline.audio import Samples, float_to_pcm16, resample
from pipeline.messages import SAMPLE_RATE, SpeechSegment
from workers.engines.asr.base import AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.mt.apertium import ApertiumTranslator
from workers.engines.tts.base import Audio, Synthesizer
from workers.engines.tts.espeak import EspeakSynthesizer
from workers.engines.tts.piper import PiperSynthesizer
from workers.engines.tts.render import render

MODELS = {
    "asr": f"Whisper base and tiny.en (faster-whisper, int8; {AsrOptions().final_pass})",
    "mt": "Apertium",
    "tts": "espeak-ng, Piper en_US-joe-medium",
}
SENTENCES = (
    "Good morning everyone, thank you for joining the meeting today.",
    "The new version of the website will be ready next week.",
    "We need to hire two more engineers before the end of the year.",
    "Please send me the report after lunch.",
    "The customer asked for a lower price and a faster delivery.",
    "I think we should test the system with more users first.",
)


def speech_clip(synth: Synthesizer, text: str, language: str) -> Samples:
    audio = synth.synthesize(text, language)
    return np.concatenate(
        [np.zeros(SAMPLE_RATE // 5, np.float32), resample(audio.samples, audio.sample_rate, SAMPLE_RATE)]
    )


def segment(samples: Samples, language: str, seq: int = 0) -> SpeechSegment:
    return SpeechSegment(
        room="bench", speaker="bench", seq=seq, language=language, targets=("es",),
        start_sample=0, end_sample=samples.size, pcm=float_to_pcm16(samples),
    )  # fmt: skip


def taus(work: Callable[[int], Any], durations: list[float]) -> list[float]:
    out = []
    for i, duration in enumerate(durations):
        started = time.perf_counter()
        work(i)
        out.append((time.perf_counter() - started) / duration)
    return out


def asr_rows(model: str, clips: dict[str, list[Samples]]) -> list[dict[str, Any]]:
    asr = FasterWhisperRecognizer(AsrOptions(model=model))
    asr.transcribe(segment(clips["en"][0], "en"))  # warm-up: the first call allocates buffers
    rows = []
    for language, samples in clips.items():
        durations = [c.size / SAMPLE_RATE for c in samples]
        values = taus(lambda i: asr.transcribe(segment(samples[i], language, i)), durations)  # noqa: B023
        rows.append(row("asr", asr.name, language, values))
    return rows


def row(stage: str, engine: str, language: str, values: list[float]) -> dict[str, Any]:
    return {
        "stage": stage,
        "engine": engine,
        "language": language,
        "clips": len(values),
        "tau_p50": round(float(np.percentile(values, 50)), 4),
        "tau_p95": round(float(np.percentile(values, 95)), 4),
    }


def run(out_dir: Path, sentences: tuple[str, ...] = SENTENCES) -> dict[str, Any]:
    piper, espeak = PiperSynthesizer(), EspeakSynthesizer()
    mt = ApertiumTranslator()
    en = [speech_clip(piper, s, "en") for s in sentences]
    durations = [c.size / SAMPLE_RATE for c in en]
    spanish = [mt.translate(s, "en", ["es"])["es"].text for s in sentences]  # also starts the pipe
    es = [speech_clip(espeak, s, "es") for s in spanish]
    rows = asr_rows("base", {"en": en, "es": es}) + asr_rows("tiny.en", {"en": en})
    rows.append(
        row("mt", f"{mt.name} en->es", "es", taus(lambda i: mt.translate(sentences[i], "en", ["es"]), durations))
    )
    rows.append(
        row(
            "mt",
            f"{mt.name} en->pt (via es)",
            "pt",
            taus(lambda i: mt.translate(sentences[i], "en", ["pt"]), durations),
        )
    )
    for synth, language, texts in ((espeak, "es", spanish), (piper, "en", list(sentences))):

        def speak(i: int, synth: Synthesizer = synth, language: str = language, texts: list[str] = texts) -> Audio:
            audio = synth.synthesize(texts[i], language)
            render(audio, durations[i])  # duration fitting is part of the stage
            return audio

        rows.append(row("tts", f"{synth.name} + fit", language, taus(speak, durations)))
    mt.close()
    result = {**provenance(MODELS), "cpus": os.cpu_count(), "stages": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stages.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(rows)
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'stage':<5} {'engine':<44} {'lang':<4} {'clips':>5} {'tau p50':>8} {'tau p95':>8}")
    for r in rows:
        head = f"{r['stage']:<5} {r['engine']:<44} {r['language']:<4} {r['clips']:>5}"
        print(f"{head} {r['tau_p50']:>8.3f} {r['tau_p95']:>8.3f}")


if __name__ == "__main__":
    run(Path("bench-out"))
