"""`python -m benchmarks.asr_warmup`: what a fresh ASR worker's first captions cost, with and without the warm-up
the stage runs at load (FasterWhisperRecognizer.warm), and how long the warm-up adds to loading.

Each run is a fresh process, as a freshly started worker is: the stage loads on one thread, then two drafts
(greedy, fitted) of the first half of a real English clip (LibriVox, 7.1 s) and two finals (5 beams, fitted) of
the whole clip follow one after the other on another thread, as the worker's calls come. Cold and warm runs
interleave, REPEATS each, because other processes share the CPU; the figures are each call's median over the
runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace

from benchmarks.real_speech import clips
from pipeline.audio import float_to_pcm16
from pipeline.messages import SpeechSegment
from workers.asr import AsrStage
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer

REPEATS = 5
CALLS = ("draft 1", "draft 2", "final 1", "final 2")


class ColdRecognizer(FasterWhisperRecognizer):
    """The recognizer as it was before the warm-up: `warm` does nothing."""

    def warm(self) -> None:
        self.warmed = False


def one_run(warm: bool) -> dict[str, float]:
    """The model, then the warm-up (or nothing) on a thread of its own, then the four calls: seconds of each."""
    audio = clips(("en",))[0].audio
    segment = SpeechSegment(room="r", speaker="s", seq=1, language="en", start_sample=0, end_sample=audio.size,
                            pcm=float_to_pcm16(audio))  # fmt: skip
    half = replace(segment, pcm=segment.pcm[: len(segment.pcm) // 4 * 2], end_sample=segment.end_sample // 2)
    stage, times = AsrStage(), {}

    def load() -> None:
        started = time.perf_counter()
        stage.recognizer = (FasterWhisperRecognizer if warm else ColdRecognizer)(stage.options)
        times["model"] = time.perf_counter() - started
        stage.load()  # the warm-up, or nothing
        times["warm-up"] = time.perf_counter() - started - times["model"]

    loader = threading.Thread(target=load)
    loader.start()
    loader.join()
    recognizer = stage.recognizer
    assert recognizer is not None
    calls = [lambda: recognizer.draft(half, "")] * 2 + [lambda: recognizer.transcribe(segment)] * 2
    for name, call in zip(CALLS, calls, strict=True):
        started = time.perf_counter()
        call()
        times[name] = time.perf_counter() - started
    return times


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(one_run(sys.argv[2] == "warm")))
        return
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for _ in range(REPEATS):
        for variant, results in runs.items():
            child = [sys.executable, "-m", "benchmarks.asr_warmup", "--child", variant]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.splitlines()[-1]))
    columns = ("model", "warm-up", *CALLS)
    print("seconds " + " ".join(f"{c:>8}" for c in columns) + f"   (median of {REPEATS} fresh processes)")
    for variant, results in runs.items():
        print(f"{variant:7} " + " ".join(f"{statistics.median(r[c] for r in results):8.2f}" for c in columns))
    print("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
