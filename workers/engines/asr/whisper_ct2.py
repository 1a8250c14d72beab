"""Whisper on CTranslate2 (faster-whisper): the offline default. Model "base" is the bundled Whisper base
multilingual, "tiny.en" the bundled English-only model, anything else a faster-whisper model name or directory.
int8 on CPU, float16 on CUDA. Finals over a fitted window (see base.FIT) or the full one; drafts fitted, greedy."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.audio import Samples
from pipeline.messages import SAMPLE_RATE, SpeechSegment, Transcript, Word
from workers.engines.asr.base import (
    DRAFT_BEAM_SIZE,
    DRAFT_EXTRA_TOKENS,
    DRAFT_NO_REPEAT_NGRAM,
    DRAFT_PAD_S,
    DRAFT_TOKENS_PER_SECOND,
    FIT,
    LATE_START_S,
    MAX_FIT_WINDOW_S,
    TIMESTAMP_S,
    WHISPER_LANGUAGES,
    AsrOptions,
    empty_transcript,
)
from workers.engines.asr.guard import (
    HallucinationGuard,
    SegmentScores,
    avg_logprob,
    compression_ratio,
    repeated_phrase,
    speech_audio,
)
from workers.engines.asr.models import resolve_model
from workers.engines.common import EngineUnavailable

log = logging.getLogger(__name__)

# The warm-up's audio: a second of voiced, syllable-paced sound (a 120 Hz voice's first harmonics, four
# syllables), which the model decodes as some words or none; its text is thrown away.
WARM_UP_S = 1.0
WARM_UP_F0_HZ = 120.0
WARM_UP_HARMONICS = 8
WARM_UP_SYLLABLES_PER_S = 4.0
WARM_UP_PEAK = 0.3


def warm_up_signal() -> Samples:
    t = np.arange(round(WARM_UP_S * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
    harmonics = np.arange(1, WARM_UP_HARMONICS + 1, dtype=np.float32)[:, None]
    voice = (np.sin(2 * np.pi * WARM_UP_F0_HZ * harmonics * t) / harmonics).sum(axis=0)
    samples: Samples = (voice * np.sin(np.pi * WARM_UP_SYLLABLES_PER_S * t) ** 2).astype(np.float32)
    return samples * np.float32(WARM_UP_PEAK / np.max(np.abs(samples)))


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no CTranslate2 or a broken CUDA install: cpu is always there
        return "cpu"


def heard_tokens(tokens: Sequence[int], timestamp_begin: int, eot: int, duration_s: float) -> list[int]:
    """The text tokens of a timestamped decode (the prompt's prefix included), without those of segments
    that start later than LATE_START_S before the audio's end: there is nothing left to hear there."""
    kept, start_s = [], 0.0
    for token in tokens:
        if token >= timestamp_begin:
            start_s = (token - timestamp_begin) * TIMESTAMP_S
        elif token < eot and start_s < duration_s - LATE_START_S:
            kept.append(token)
    return kept


@dataclass(frozen=True)
class Heard:
    """One fitted decoding, before the guard judges it."""

    text: str
    tokens: list[int]
    scores: SegmentScores
    tokenizer: Any
    encoded: Any  # the encoder's output (a ctranslate2.StorageView), which word timing reads again


@dataclass(frozen=True)
class WhisperText:
    """What one faster-whisper pass heard."""

    text: str
    language: str
    words: tuple[Word, ...] = ()


class FasterWhisperRecognizer:
    def __init__(self, options: AsrOptions = AsrOptions()) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable("faster-whisper is not installed: pip install 'babelroom[asr]'") from exc
        self.options = options
        device = pick_device(options.device)
        compute_type = options.compute_type or ("float16" if device == "cuda" else "int8")
        self.model = WhisperModel(
            resolve_model(options.model, options.cache_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=options.cpu_threads,
            num_workers=options.num_workers,
            local_files_only=not options.allow_download,
        )
        self.languages = WHISPER_LANGUAGES if self.model.model.is_multilingual else ("en",)
        self.guard = HallucinationGuard(options.guard)
        self.name = f"faster-whisper:{options.model} ({device}, {compute_type})"
        self.warmed = False

    def transcribe(self, segment: SpeechSegment) -> Transcript:
        """The final text of a segment, decoded after the words interim captions committed (`committed`).
        Fitted context first (when chosen); the full window when the guard rejects what that decoded or it
        repeats a phrase."""
        heard = speech_audio(segment, self.languages, self.guard)
        if heard is None:
            return empty_transcript(segment)
        audio, speech_s = heard
        if self.options.audio_context == FIT:
            fitted = self._decode_fitted(
                audio,
                speech_s,
                segment.language,
                segment.committed,
                with_words=True,
                min_window_s=self.options.fit_min_window_s,
                beam_size=self.options.beam_size,
            )
            if fitted is not None and not self._invents_repetition(fitted):
                transcript = empty_transcript(segment, fitted.language)
                return dataclasses.replace(transcript, text=fitted.text, words=fitted.words)
        return self._transcribe_full_window(segment, audio, speech_s)

    @staticmethod
    def _invents_repetition(fitted: WhisperText) -> bool:
        """A fitted final that says a phrase twice may have invented the second time (it reads the start again
        in the padding): the full window then decides, and keeps the repetition only where the audio holds it."""
        phrase = repeated_phrase(fitted.text.split())
        if phrase:
            log.info("fitted final repeats %r; decoding the full window instead", phrase)
        return bool(phrase)

    def draft(self, segment: SpeechSegment, prefix: str) -> str:
        heard = speech_audio(segment, self.languages, self.guard)
        fitted = self._decode_fitted(*heard, segment.language, prefix, with_words=False) if heard else None
        return fitted.text if fitted else prefix

    def _transcribe_full_window(self, segment: SpeechSegment, audio: Samples, speech_s: float) -> Transcript:
        pieces, info = self.model.transcribe(
            audio,
            language=segment.language or None,
            prefix=segment.committed or None,
            beam_size=self.options.beam_size,
            temperature=0.0,  # no sampling fallback: a retry at high temperature is where hallucinations come from
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # segments are already cut at pauses; the guard ran the VAD above
            no_speech_threshold=None,  # the guard decides, with the scores of every segment
        )
        kept = [
            p
            for p in pieces
            if self.guard.keep_segment(SegmentScores(p.text, p.no_speech_prob, p.avg_logprob, p.compression_ratio))
        ]
        words = tuple(
            Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for p in kept
            for w in p.words or ()
        )
        text = " ".join(p.text.strip() for p in kept).strip()
        if not self.guard.plausible_text(text.split(), speech_s):
            return empty_transcript(segment, info.language)
        return dataclasses.replace(empty_transcript(segment, info.language), text=text, words=words)

    def warm(self) -> None:
        """Runs once each step a caption takes, before the worker reads the bus: a fresh model's first draft costs
        several times a later one (3.8 s against 0.3-0.8 s on 2 busy cores), and CI starts fresh workers per test.
        The VAD, a draft's greedy pass and a final's beam search with word timings, on a second of WARM_UP_SIGNAL."""
        if self.warmed:
            return
        audio = warm_up_signal()
        self.guard.speech_seconds(audio)  # loads Silero
        language = self.languages[0]
        self._hear(audio, language, "", min_window_s=0.0, beam_size=DRAFT_BEAM_SIZE)
        final = self._hear(audio, language, "", min_window_s=self._final_window_s, beam_size=self.options.beam_size)
        self._word_timings(final.tokenizer, final.tokens, final.encoded, audio.size // self._hop)
        self.warmed = True

    @property
    def _final_window_s(self) -> float:
        return self.options.fit_min_window_s if self.options.audio_context == FIT else MAX_FIT_WINDOW_S

    @property
    def _hop(self) -> int:
        return int(self.model.feature_extractor.hop_length)

    def _decode_fitted(
        self,
        audio: Samples,
        speech_s: float,
        language: str,
        prefix: str,
        with_words: bool,
        min_window_s: float = 0.0,
        beam_size: int = DRAFT_BEAM_SIZE,
    ) -> WhisperText | None:
        """Text (and word timings, when asked) heard after `prefix` in a fitted window (see `_hear`); None when the
        guard rejects it (no speech, improbable text, a loop)."""
        heard = self._hear(audio, language, prefix, min_window_s, beam_size)
        if not self.guard.keep_segment(heard.scores) or not self.guard.plausible_text(heard.text.split(), speech_s):
            return None
        frames = audio.size // self._hop
        words = self._word_timings(heard.tokenizer, heard.tokens, heard.encoded, frames) if with_words else ()
        return WhisperText(heard.text, heard.tokenizer.language_code, words)

    def _hear(self, audio: Samples, language: str, prefix: str, min_window_s: float, beam_size: int) -> Heard:
        """One decoding after `prefix` on an encoder input cut to the audio (see DRAFT_PAD_S; at least
        `min_window_s` long), with timestamps so that text the model places after the audio's end (a short
        window's typical invention: the start again) is dropped."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        # Padded with silent audio, as Whisper pads its window (not with zero features, which it never saw).
        pad_s = max(DRAFT_PAD_S, min_window_s - audio.size / SAMPLE_RATE)
        padded = np.concatenate([audio, np.zeros(round(pad_s * SAMPLE_RATE), np.float32)])
        features = np.ascontiguousarray(self.model.feature_extractor(padded)[None], dtype=np.float32)
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        language = language or self.model.model.detect_language(encoded)[0][0][0].strip("<|>")
        tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language=language
        )
        # As faster-whisper prompts a prefix in timestamp mode: after the first timestamp.
        prefix_tokens = [tokenizer.timestamp_begin, *tokenizer.encode(" " + prefix)] if prefix else []
        prompt = [*tokenizer.sot_sequence, *prefix_tokens]
        budget = int(audio.size / SAMPLE_RATE * DRAFT_TOKENS_PER_SECOND) + DRAFT_EXTRA_TOKENS
        [result] = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=beam_size,
            max_length=len(prompt) + budget,
            no_repeat_ngram_size=DRAFT_NO_REPEAT_NGRAM,
            return_scores=True,
            return_no_speech_prob=True,
        )
        duration_s = audio.size / SAMPLE_RATE
        tokens = heard_tokens(result.sequences_ids[0], tokenizer.timestamp_begin, tokenizer.eot, duration_s)
        text = " ".join(str(tokenizer.decode(tokens)).split())  # segments joined: one space between words
        scores = SegmentScores(
            text, result.no_speech_prob, avg_logprob(result.scores[0], len(tokens)), compression_ratio(text)
        )
        return Heard(text, tokens, scores, tokenizer, encoded)

    def _word_timings(self, tokenizer: Any, tokens: list[int], encoded: Any, frames: int) -> tuple[Word, ...]:
        """From the decoder's cross-attention, as faster-whisper times words (its own alignment)."""
        [aligned] = self.model.find_alignment(tokenizer, [tokens], encoded, frames)
        return tuple(
            Word(w["word"].strip(), float(w["start"]), float(w["end"]), float(w["probability"])) for w in aligned
        )
