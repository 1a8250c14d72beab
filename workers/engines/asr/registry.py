"""The configured ASR engine. Nothing inside the engines imports this module: it imports them, each only when
chosen."""

from __future__ import annotations

from workers.engines.asr.base import FASTER_WHISPER, TRANSFORMERS, AsrOptions, Recognizer


def load_recognizer(options: AsrOptions) -> Recognizer:
    if options.engine == FASTER_WHISPER:
        from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer

        return FasterWhisperRecognizer(options)
    if options.engine == TRANSFORMERS:
        from workers.engines.asr.whisper_torch import TransformersWhisperRecognizer

        return TransformersWhisperRecognizer(options)
    raise ValueError(f"unknown ASR engine {options.engine!r}: use {FASTER_WHISPER!r} or {TRANSFORMERS!r}")
