"""The voice for each language, from config ("en=piper:bundled,es=espeak:es,de=vits:facebook/mms-tts-deu"). Nothing
inside the engines imports this module: it imports them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from workers.engines.common import EngineUnavailable
from workers.engines.tts.base import (
    BUNDLED_VOICE,
    ESPEAK,
    PIPER,
    VITS,
    Audio,
    BatchSynthesizer,
    Synthesizer,
    TtsOptions,
)
from workers.engines.tts.espeak import EspeakSynthesizer
from workers.engines.tts.piper import PiperSynthesizer
from workers.engines.tts.vits import VitsSynthesizer
from workers.stage import one_by_one

log = logging.getLogger(__name__)


def parse_voices(spec: str) -> dict[str, tuple[str, str]]:
    """ "en=piper:/v.onnx,es=espeak:es" -> {"en": ("piper", "/v.onnx"), "es": ("espeak", "es")}."""
    voices: dict[str, tuple[str, str]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        language, sep, rest = item.partition("=")
        engine, _, arg = rest.partition(":")
        if not sep or engine not in (ESPEAK, PIPER, VITS) or (engine == VITS and not arg):
            raise ValueError(f"bad voice {item!r}: expected LANG=espeak[:VOICE], LANG=piper[:PATH] or LANG=vits:MODEL")
        voices[language.strip()] = (engine, arg.strip())
    return voices


class VoiceRouter:
    """The configured voice for each language, espeak-ng for the rest; each voice loaded once and kept.

    espeak-ng is optional where every language has a voice of its own (a GPU host with MMS voices): without it
    the other languages are unsupported, which the worker reports per message."""

    def __init__(self, options: TtsOptions = TtsOptions()) -> None:
        self.options = options
        self.voices = parse_voices(options.voices)
        self.espeak = self._fallback() if self.voices else EspeakSynthesizer(words_per_minute=options.espeak_wpm)
        self.loaded: dict[tuple[str, str, str], Synthesizer] = {}
        self.lock = threading.Lock()
        rest = ", *=espeak" if self.espeak else ""
        self.name = "voices(" + ", ".join(f"{k}={e}" for k, (e, _) in sorted(self.voices.items())) + rest + ")"

    def _fallback(self) -> EspeakSynthesizer | None:
        try:
            return EspeakSynthesizer(words_per_minute=self.options.espeak_wpm)
        except EngineUnavailable as exc:
            log.warning("%s: only %s have a voice", exc, ", ".join(sorted(self.voices)))
            return None

    def load(self) -> None:
        for language in self.voices:
            self.engine(language)

    def engine(self, language: str) -> Synthesizer:
        engine, arg = self.voices.get(language, (ESPEAK, ""))
        key = (engine, arg, language if engine == VITS else "")
        with self.lock:
            if key not in self.loaded:
                self.loaded[key] = self._build(engine, arg, language)
            return self.loaded[key]

    def _build(self, engine: str, arg: str, language: str) -> Synthesizer:
        if engine == PIPER:
            return PiperSynthesizer(arg or BUNDLED_VOICE, use_cuda=self.options.device == "cuda")
        if engine == VITS:
            return VitsSynthesizer(arg, language, self.options.device, self.options.allow_download)
        if self.espeak is None:
            raise EngineUnavailable(f"no voice for {language!r}: configure one or apt-get install espeak-ng")
        return EspeakSynthesizer(arg, self.options.espeak_wpm) if arg else self.espeak

    def supports(self, language: str) -> bool:
        return language in self.voices or (self.espeak is not None and self.espeak.supports(language))

    def synthesize(self, text: str, language: str) -> Audio:
        return self.engine(language).synthesize(text, language)

    def synthesize_batch(self, texts: Sequence[str], languages: Sequence[str]) -> list[Audio | Exception]:
        """Each language's texts together: one batch for a voice that batches, one at a time otherwise."""
        results: dict[int, Audio | Exception] = {}
        for language in dict.fromkeys(languages):
            indices = [i for i, code in enumerate(languages) if code == language]
            results |= zip(indices, self._voice_all([texts[i] for i in indices], language), strict=True)
        return [results[i] for i in range(len(texts))]

    def _voice_all(self, texts: list[str], language: str) -> list[Audio | Exception]:
        engine = self.engine(language)
        if isinstance(engine, BatchSynthesizer):
            return list(engine.synthesize_batch(texts, language))
        return one_by_one(texts, lambda text: engine.synthesize(text, language))

    def engine_name(self, language: str) -> str:
        return self.engine(language).name
