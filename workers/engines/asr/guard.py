"""`HallucinationGuard`: keeps silence, noise and music from becoming captions with language-independent
signals only (VAD speech ratio, no-speech probability, average log-probability, compression ratio, repetition,
speaking rate). No phrase lists."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.audio import Samples, pcm16_to_float, rms_dbfs
from pipeline.messages import SAMPLE_RATE, SpeechSegment
from workers.engines.asr.base import REPEATED_PHRASE_WORDS, REPETITION_MIN_WORDS, GuardOptions, check_language


@dataclass(frozen=True)
class SegmentScores:
    """What one decoded Whisper segment looks like to the guard."""

    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float


class HallucinationGuard:
    def __init__(self, options: GuardOptions) -> None:
        self.options = options

    def speech_seconds(self, audio: Samples) -> float:
        """Seconds of speech the VAD finds; 0 for silence, and for most noise, tones and music."""
        if audio.size == 0 or rms_dbfs(audio) < self.options.silence_dbfs:
            return 0.0
        try:
            from faster_whisper.vad import VadOptions, get_speech_timestamps
        except ImportError:  # the torch engine on a GPU host may lack faster-whisper: fall back to energy
            return _energy_speech_seconds(audio, self.options.silence_dbfs)
        vad = VadOptions(threshold=self.options.vad_threshold, min_silence_duration_ms=300, speech_pad_ms=30)
        spans = get_speech_timestamps(audio, vad)
        return float(sum(s["end"] - s["start"] for s in spans)) / SAMPLE_RATE

    def has_speech(self, audio: Samples) -> tuple[bool, float]:
        speech_s = self.speech_seconds(audio)
        ratio = speech_s / max(audio.size / SAMPLE_RATE, 1e-6)
        return speech_s >= self.options.min_speech_s and ratio >= self.options.min_speech_ratio, speech_s

    def keep_segment(self, s: SegmentScores) -> bool:
        o = self.options
        if s.no_speech_prob > o.no_speech_threshold and s.avg_logprob < o.logprob_threshold:
            return False
        return s.avg_logprob >= o.min_avg_logprob and s.compression_ratio <= o.compression_ratio_threshold

    def plausible_text(self, words: Sequence[str], speech_s: float) -> bool:
        if not words:
            return False
        if len(words) > max(speech_s, 0.5) * self.options.max_words_per_speech_s:
            return False
        if len(words) >= REPETITION_MIN_WORDS:
            distinct = len({bare_word(w) for w in words})
            return distinct / len(words) >= self.options.min_distinct_word_ratio
        return True


def bare_word(word: str) -> str:
    return word.lower().strip(".,!?;:¿¡'\"")


def repeated_phrase(words: Sequence[str], length: int = REPEATED_PHRASE_WORDS) -> str:
    """The first phrase of `length` words said twice without overlap (case and punctuation ignored), or ""."""
    bare = [bare_word(w) for w in words]
    first_seen: dict[tuple[str, ...], int] = {}
    for i in range(len(bare) - length + 1):
        phrase = tuple(bare[i : i + length])
        if i - first_seen.setdefault(phrase, i) >= length:
            return " ".join(phrase)
    return ""


def avg_logprob(score: float, length: int) -> float:
    """CTranslate2 scores a sequence by its summed log-probability over its length; Whisper's average counts
    the end-of-text token too."""
    return score * length / (length + 1)


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1)


def _energy_speech_seconds(audio: Samples, floor_dbfs: float, frame: int = 480) -> float:
    """Crude VAD: 30 ms frames within 30 dB of the loudest and above the floor."""
    n = audio.size // frame
    if n == 0:
        return 0.0
    frames = audio[: n * frame].reshape(n, frame)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    active = (db > floor_dbfs) & (db > db.max() - 30)
    return float(active.sum() * frame / SAMPLE_RATE)


def speech_audio(
    segment: SpeechSegment, languages: Sequence[str], guard: HallucinationGuard
) -> tuple[Samples, float] | None:
    """What every engine does first: check the declared language, then the segment's audio and its
    seconds of speech, or None when the guard hears no speech (nothing is decoded then)."""
    check_language(segment.language, languages)
    audio = pcm16_to_float(segment.pcm)
    speech, speech_s = guard.has_speech(audio)
    return (audio, speech_s) if speech else None
