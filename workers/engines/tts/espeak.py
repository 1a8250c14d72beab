"""espeak-ng through libespeak-ng (ctypes), so each phoneme's time comes with the audio."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import subprocess
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.audio import Samples
from pipeline.messages import Phoneme
from workers.engines.common import EngineUnavailable
from workers.engines.tts.base import DEFAULT_ESPEAK_WPM, Audio, clean_symbol

# espeak-ng has no voice for some codes; the nearest it has (Galician reads acceptably with Portuguese rules).
ESPEAK_FALLBACKS = {"en": "en-us", "zh": "cmn", "no": "nb", "gl": "pt", "fr": "fr-fr"}


def espeak_voices() -> frozenset[str]:
    out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True).stdout
    return frozenset(line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1)


class EspeakSynthesizer:
    def __init__(self, voice: str = "", words_per_minute: int = DEFAULT_ESPEAK_WPM) -> None:
        try:
            self.voices = espeak_voices()
        except FileNotFoundError as exc:
            raise EngineUnavailable("espeak-ng is not installed: apt-get install espeak-ng") from exc
        self.library = EspeakLibrary.shared()
        self.voice = voice  # empty: pick by language
        self.wpm = words_per_minute
        self.name = f"espeak-ng:{voice}" if voice else "espeak-ng"

    def voice_for(self, language: str) -> str | None:
        if self.voice:
            return self.voice
        for candidate in (language, ESPEAK_FALLBACKS.get(language, "")):
            if candidate in self.voices:
                return candidate
        return next((v for v in sorted(self.voices) if v.startswith(f"{language}-")), None)

    def supports(self, language: str) -> bool:
        return self.voice_for(language) is not None

    def synthesize(self, text: str, language: str) -> Audio:
        voice = self.voice_for(language)
        if voice is None:
            raise ValueError(f"espeak-ng has no voice for {language!r}")
        return self.library.synthesize(text, voice, self.wpm)


class _EspeakEvent(ctypes.Structure):
    """espeak_EVENT from speak_lib.h; `name` is the union's char[8] (the phoneme, with PHONEME_EVENTS)."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("name", ctypes.c_char * 8),
    )


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS, _INITIALIZE_PHONEME_IPA, _INITIALIZE_DONT_EXIT = 0x0001, 0x0002, 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_PARAMETER_RATE, _POS_CHARACTER, _CHARS_UTF8 = 1, 1, 1
_END_PAUSE = 0x1000  # espeakENDPAUSE: the closing pause the command line adds too (ASR misses last words without it)


class EspeakLibrary:
    """libespeak-ng through ctypes, once per process (the library keeps global state, so calls are
    serialised). Each synthesis returns its audio and the phoneme events (IPA names, audio positions)."""

    _shared: EspeakLibrary | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng")
        if path is None:
            raise EngineUnavailable("libespeak-ng is not installed: apt-get install espeak-ng")
        self.lib = _declare(ctypes.CDLL(path))
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options))
        if self.sample_rate <= 0:
            raise EngineUnavailable("libespeak-ng failed to initialise (is espeak-ng-data installed?)")
        self._chunks: list[Samples] = []
        self._events: list[tuple[str, float]] = []
        self._callback = _ESPEAK_CALLBACK(self._collect)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    @classmethod
    def shared(cls) -> EspeakLibrary:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).astype(np.float32) / 32768.0)
        for i in itertools.count():
            event = events[i]
            if event.type == _EVENT_LIST_TERMINATED:
                break
            if event.type == _EVENT_PHONEME:
                self._events.append((event.name.decode("utf-8", "replace"), event.audio_position / 1000))
        return 0  # go on synthesising

    def synthesize(self, text: str, voice: str, words_per_minute: int) -> Audio:
        data = text.encode("utf-8") + b"\0"
        with self.lock:
            self._chunks, self._events = [], []
            # `espeak-ng --voices` lists language codes (fr-fr); the library loads voices by name (fr)
            names = (voice, voice.split("-")[0])
            if all(self.lib.espeak_SetVoiceByName(name.encode()) != 0 for name in names):
                raise ValueError(f"espeak-ng could not load voice {voice!r}")
            self.lib.espeak_SetParameter(_PARAMETER_RATE, words_per_minute, 0)
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _END_PAUSE, None, None)
            self.lib.espeak_Synchronize()
            chunks, events = self._chunks, self._events
        if status != 0:
            raise RuntimeError(f"espeak-ng synthesis failed (error {status})")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Audio(samples, self.sample_rate, phonemes_from_starts(events, samples.size / self.sample_rate))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The C signatures (speak_lib.h) of the calls used, so ctypes passes each argument at its real width."""
    c_int, c_uint = ctypes.c_int, ctypes.c_uint
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "espeak_Initialize": (c_int, [c_int, c_int, ctypes.c_char_p, c_int]),
        "espeak_SetSynthCallback": (None, [_ESPEAK_CALLBACK]),
        "espeak_SetVoiceByName": (c_int, [ctypes.c_char_p]),
        "espeak_SetParameter": (c_int, [c_int, c_int, c_int]),
        "espeak_Synth": (
            c_int,
            [ctypes.c_void_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint, ctypes.POINTER(c_uint), ctypes.c_void_p],
        ),
        "espeak_Synchronize": (c_int, []),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def phonemes_from_starts(starts: Iterable[tuple[str, float]], end_s: float) -> tuple[Phoneme, ...]:
    """Each phoneme lasts until the next event (a pause is an event with no name) or the end."""
    events = list(starts)
    ends = [t for _, t in events[1:]] + [end_s]
    return tuple(
        Phoneme(symbol, start, max(start, end))
        for (name, start), end in zip(events, ends, strict=True)
        if (symbol := clean_symbol(name))
    )
