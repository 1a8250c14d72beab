"""Streaming, silence-adaptive speech segmenter: one per speaker, audio in, whole phrases out.

Audio at any rate from 8 to 48 kHz is resampled, exactly as a one-shot `resample_poly` would, to the
speaker's 16 kHz timeline; every position below is a sample index in that timeline.

Algorithm, per frame of FRAME_MS (20 ms; 32 ms with Silero):

1. Voiced = the VAD (webrtcvad at VAD_AGGRESSIVENESS, or Silero at SILERO_THRESHOLD) says speech AND
   the frame's energy is at least NOISE_GATE_DB above the noise floor. The noise floor is the
   NOISE_PERCENTILE-th percentile of frame energies over the last NOISE_WINDOW_S: it follows steady
   noise up and down, so a fan or hiss that fools the VAD is never speech.
   A stream that starts in mid-speech (a person who greets the room as their microphone opens) first teaches
   the floor the speech itself, and the gate then hides it. So until a segment first opens, the stream's start
   is kept; at each pause of REVIEW_PAUSE_S (frames a gate below the highest floor frames were judged against),
   that start is judged again against the floor the pause shows, and a phrase found there is a segment.
2. Onset: ONSET_FRAMES voiced frames within the last ONSET_WINDOW_FRAMES. Speech starts at the first
   of them, extended back over frames EXTEND_GATE_DB above the floor; the segment starts PRE_ROLL_S
   earlier still (never before the previous segment's end), so first syllables are never clipped.
3. End: the segment closes once the silence since the last voiced frame reaches the closing pause
   = clamp(PAUSE_FACTOR x the PAUSE_PERCENTILE-th percentile of this speaker's last PAUSE_HISTORY
   pauses inside speech (each at least MIN_COUNTED_PAUSE_S), MIN_END_PAUSE_S, MAX_END_PAUSE_S);
   DEFAULT_END_PAUSE_S until MIN_PAUSES_TO_ADAPT pauses are known. A speaker who hesitates long
   mid-phrase gets a longer closing pause; a brisk one gets cut sooner, so MT receives whole phrases.
   Noise adapts it too: where the gate hides soft sounds, the gaps it leaves enter the history.
   Speech is then extended over adjacent frames still EXTEND_GATE_DB above the floor (unvoiced
   fricatives such as a final "s", which the VAD misses; gaps up to EXTEND_BRIDGE_S are bridged, as
   before a final "k" burst), and the segment ends POST_ROLL_S later.
   End of turn (end_of_turn="smart-turn", the default): once a pause reaches TURN_CHECK_PAUSE_S, Smart
   Turn v3 (pipeline/endofturn.py) judges the last 8 s; when it says the turn is complete the segment
   closes then, without waiting for the closing pause. Otherwise, and when the model is not installed
   or end_of_turn="pause", the closing pause decides.
4. A segment with less than MIN_SPEECH_S of speech (a click, a cough) is dropped.
5. At MAX_SEGMENT_S the segment is cut at the quietest QUIET_WINDOW_S of its last CUT_SEARCH_S
   (between words, not mid-word); the next segment continues from that sample without a gap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import ceil, gcd
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.signal import firwin, resample_poly

from pipeline.audio import Samples, float_to_pcm16, pcm16_to_float, rms_dbfs
from pipeline.endofturn import COMPLETE_THRESHOLD, WINDOW_S, SmartTurn, shared_smart_turn
from pipeline.messages import SAMPLE_RATE, SpeechSegment

FRAME_MS = 20  # webrtcvad accepts 10, 20 or 30 ms
SILERO_FRAME_SAMPLES = 512  # the Silero model's window at 16 kHz (32 ms)
SILERO_CONTEXT_SAMPLES = 64  # samples of the previous window the model sees
VAD_AGGRESSIVENESS = 2  # webrtcvad 0 (lenient) .. 3 (strict)
SILERO_THRESHOLD = 0.5  # speech probability above which a Silero frame is speech

NOISE_WINDOW_S = 8.0  # long enough to hold some pauses even in fluent speech
NOISE_PERCENTILE = 10.0
NOISE_GATE_DB = 8.0  # a voiced frame stands this far above the noise floor
EXTEND_GATE_DB = 4.0  # unvoiced sounds next to speech: weaker than voice, still clearly above the noise
EXTEND_BRIDGE_S = 0.06
NOISE_FLOOR_MIN_DBFS = -70.0  # digital silence: keeps the gate meaningful when the floor is ~ -120

ONSET_WINDOW_FRAMES = 5
ONSET_FRAMES = 3  # 60 ms of voice within 100 ms starts a segment; a single click does not

PRE_ROLL_S = 0.25
POST_ROLL_S = 0.1
MIN_SPEECH_S = 0.25
MAX_SEGMENT_S = 10.0
CUT_SEARCH_S = 1.0
QUIET_WINDOW_S = 0.02

DEFAULT_END_PAUSE_S = 0.5
MIN_END_PAUSE_S = 0.3
MAX_END_PAUSE_S = 1.2
PAUSE_FACTOR = 1.5
PAUSE_PERCENTILE = 90.0
PAUSE_HISTORY = 20
MIN_PAUSES_TO_ADAPT = 3
MIN_COUNTED_PAUSE_S = 0.1  # shorter gaps are stop closures inside words, not pauses

# Smart Turn is asked once per pause, this far into it: long enough to pass the gaps inside phrases (at 0.2 s it
# split one in the 8 kHz test of tests/test_segmenter.py), short enough that a finished sentence closes well
# before the adaptive pause (DEFAULT_END_PAUSE_S, and at least MIN_END_PAUSE_S).
TURN_CHECK_PAUSE_S = 0.25
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE

# A stream's start is judged again (see above) once it has been this quiet: longer than the dips inside a word.
REVIEW_PAUSE_S = 0.2

MIN_INPUT_RATE = 8_000
MAX_INPUT_RATE = 48_000

VadEngine = Literal["webrtc", "silero"]
EndOfTurn = Literal["smart-turn", "pause"]
END_OF_TURN_MODES: tuple[EndOfTurn, ...] = ("smart-turn", "pause")
DEFAULT_END_OF_TURN: EndOfTurn = "smart-turn"  # falls back to the pause when the model is not installed
CutReason = Literal["pause", "turn_end", "max_length", "flush"]


@dataclass(frozen=True)
class SegmenterOptions:
    vad: VadEngine = "webrtc"
    frame_ms: int = FRAME_MS
    vad_aggressiveness: int = VAD_AGGRESSIVENESS
    silero_threshold: float = SILERO_THRESHOLD
    noise_window_s: float = NOISE_WINDOW_S
    noise_percentile: float = NOISE_PERCENTILE
    noise_gate_db: float = NOISE_GATE_DB
    extend_gate_db: float = EXTEND_GATE_DB
    onset_window_frames: int = ONSET_WINDOW_FRAMES
    onset_frames: int = ONSET_FRAMES
    pre_roll_s: float = PRE_ROLL_S
    post_roll_s: float = POST_ROLL_S
    min_speech_s: float = MIN_SPEECH_S
    max_segment_s: float = MAX_SEGMENT_S
    cut_search_s: float = CUT_SEARCH_S
    default_end_pause_s: float = DEFAULT_END_PAUSE_S
    min_end_pause_s: float = MIN_END_PAUSE_S
    max_end_pause_s: float = MAX_END_PAUSE_S
    pause_factor: float = PAUSE_FACTOR
    pause_percentile: float = PAUSE_PERCENTILE
    pause_history: int = PAUSE_HISTORY
    min_pauses_to_adapt: int = MIN_PAUSES_TO_ADAPT
    min_counted_pause_s: float = MIN_COUNTED_PAUSE_S
    end_of_turn: EndOfTurn = DEFAULT_END_OF_TURN
    turn_check_pause_s: float = TURN_CHECK_PAUSE_S
    turn_threshold: float = COMPLETE_THRESHOLD

    def __post_init__(self) -> None:
        if self.vad == "webrtc" and self.frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad frames must be 10, 20 or 30 ms, got {self.frame_ms}")
        if not 0 < self.onset_frames <= self.onset_window_frames:
            raise ValueError("onset_frames must be in 1..onset_window_frames")
        if self.cut_search_s >= self.max_segment_s:
            raise ValueError("cut_search_s must be shorter than max_segment_s")
        if not self.min_end_pause_s <= self.max_end_pause_s:
            raise ValueError("min_end_pause_s must not exceed max_end_pause_s")
        if self.end_of_turn not in END_OF_TURN_MODES:
            raise ValueError(f"end of turn {self.end_of_turn!r}: choose one of {', '.join(END_OF_TURN_MODES)}")


@dataclass(frozen=True)
class Segment:
    """A cut of one speaker's audio. Positions are sample indices in the speaker's 16 kHz timeline:
    [start_sample, end_sample) includes pre- and post-roll; speech_* bound the detected speech."""

    samples: Samples
    start_sample: int
    end_sample: int
    speech_start_sample: int
    speech_end_sample: int
    reason: CutReason

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE

    def to_message(
        self,
        room: str,
        speaker: str,
        seq: int,
        language: str,
        targets: tuple[str, ...] = (),
        match_voice: bool = False,
        committed: str = "",
    ) -> SpeechSegment:
        return SpeechSegment(
            room=room,
            speaker=speaker,
            seq=seq,
            language=language,
            targets=targets,
            start_sample=self.start_sample,
            end_sample=self.end_sample,
            pcm=float_to_pcm16(self.samples),
            match_voice=match_voice,
            committed=committed,
        )


class StreamResampler:
    """Chunked resampling whose output equals `resample_poly` on the whole stream, sample for sample.

    Each call filters only the new input plus a margin of the filter's reach, on a slice that starts at
    a multiple of `down` so the slice's output grid coincides with the whole stream's."""

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        # resample_poly's FIR reaches 10 * max(up, down) samples of the upsampled signal each side
        self.margin = ceil(10 * max(self.up, self.down) / self.up) + 2
        # resample_poly's own low-pass, designed once: designing it again for every 20 ms chunk cost more
        # than the filtering itself
        rate = max(self.up, self.down)
        self._taps = firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)).astype(np.float32) if rate > 1 else None
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0
        self._total_in = 0
        self._done_out = 0

    def feed(self, samples: Samples) -> Samples:
        if self.up == self.down:
            return samples
        self._buffer = np.concatenate([self._buffer, samples])
        self._total_in += samples.size
        settled = (self._total_in - self.margin) * self.up // self.down
        return self._produce(max(settled, self._done_out))

    def flush(self) -> Samples:
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        return self._produce(-(-self._total_in * self.up // self.down))

    def _produce(self, end_out: int) -> Samples:
        if end_out <= self._done_out:
            return np.zeros(0, dtype=np.float32)
        start_in = self._slice_start(self._done_out)
        # resample_poly scales the window it is given in place: hand it a copy
        assert self._taps is not None  # _produce runs only when up != down
        out = resample_poly(self._buffer[start_in - self._buffer_start :], self.up, self.down, window=self._taps.copy())
        first = self._done_out - start_in * self.up // self.down
        result: Samples = np.asarray(out[first : first + end_out - self._done_out], dtype=np.float32)
        self._done_out = end_out
        keep_from = self._slice_start(end_out)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return result

    def _slice_start(self, out_index: int) -> int:
        reach = out_index * self.down // self.up - self.margin
        return max(0, reach // self.down * self.down)


class FrameClassifier(Protocol):
    frame_samples: int

    def is_speech(self, frame: Samples) -> bool: ...


class WebRtcClassifier:
    def __init__(self, frame_ms: int, aggressiveness: int) -> None:
        import webrtcvad

        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: Samples) -> bool:
        return bool(self._vad.is_speech(float_to_pcm16(frame), SAMPLE_RATE))


class SileroClassifier:
    """Silero VAD v6 (the ONNX model bundled with faster-whisper), run frame by frame with its state."""

    frame_samples = SILERO_FRAME_SAMPLES

    def __init__(self, threshold: float) -> None:
        import os

        import onnxruntime
        from faster_whisper.vad import get_assets_path

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)
        self._threshold = threshold
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(SILERO_CONTEXT_SAMPLES, dtype=np.float32)

    def is_speech(self, frame: Samples) -> bool:
        window = np.concatenate([self._context, frame])[None, :]
        prob, self._h, self._c = self._session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = frame[-SILERO_CONTEXT_SAMPLES:]
        return float(np.asarray(prob).ravel()[0]) >= self._threshold


class NoiseFloor:
    """A low percentile of recent frame energies: tracks steady noise, ignores the speech above it."""

    def __init__(self, window_frames: int, percentile: float) -> None:
        self._energies: deque[float] = deque(maxlen=window_frames)
        self._percentile = percentile

    @property
    def dbfs(self) -> float | None:
        if not self._energies:
            return None
        return max(float(np.percentile(self._energies, self._percentile)), NOISE_FLOOR_MIN_DBFS)

    def add(self, energy_dbfs: float) -> None:
        self._energies.append(energy_dbfs)


class Segmenter:
    """Feed one speaker's audio as it arrives; get back segments closed at natural pauses."""

    def __init__(self, options: SegmenterOptions | None = None, input_rate: int = SAMPLE_RATE) -> None:
        if not MIN_INPUT_RATE <= input_rate <= MAX_INPUT_RATE:
            raise ValueError(f"input rate must be {MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz, got {input_rate}")
        self.options = options or SegmenterOptions()
        self.input_rate = input_rate
        self._resampler = StreamResampler(input_rate)
        self._classifier = self._make_classifier()
        self._turn: SmartTurn | None = (
            shared_smart_turn(self.options.turn_threshold) if self.options.end_of_turn == "smart-turn" else None
        )
        self._frame = self._classifier.frame_samples
        o = self.options
        self._noise = NoiseFloor(max(1, round(o.noise_window_s * SAMPLE_RATE / self._frame)), o.noise_percentile)
        self._onset: deque[tuple[int, bool]] = deque(maxlen=o.onset_window_frames)
        self._pauses: deque[float] = deque(maxlen=o.pause_history)
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # timeline index of self._audio[0]
        self._framed = 0  # timeline index up to which frames were classified
        self._in_segment = False
        self._segment_start = 0
        self._speech_start = 0
        self._last_voiced_end: int | None = None
        self._silence = 0  # samples of silence since the last voiced frame, inside a segment
        self._previous_end = 0
        self._flushed = False
        self._start_under_review = True  # no segment opened yet: the stream's start is kept, to be judged again
        self._highest_floor: float | None = None  # the highest floor a frame of that start was judged against
        self._quiet_since: int | None = None  # where the quiet before the current frame began (under review)

    # -- what the gateway reads ------------------------------------------------------------------
    @property
    def speaking(self) -> bool:
        """True from a speech onset until its segment closes: the speaker holds the turn."""
        return self._in_segment

    @property
    def last_speech_sample(self) -> int | None:
        """End of the last voiced frame in the 16 kHz timeline, None before any speech."""
        return self._last_voiced_end

    @property
    def last_speech_s(self) -> float | None:
        return None if self._last_voiced_end is None else self._last_voiced_end / SAMPLE_RATE

    @property
    def position_sample(self) -> int:
        """How much of the 16 kHz timeline has been analysed."""
        return self._framed

    @property
    def turn_detection(self) -> bool:
        """True when Smart Turn judges pauses; False when only the adaptive pause closes segments."""
        return self._turn is not None

    def open_audio(self) -> tuple[int, Samples] | None:
        """The open segment so far, for interim recognition: its start sample and its audio up to what has
        been analysed (pre-roll included); None between segments."""
        if not self._in_segment:
            return None
        return self._segment_start, self._slice(self._segment_start, self._framed).copy()

    @property
    def noise_floor_dbfs(self) -> float | None:
        return self._noise.dbfs

    @property
    def end_pause_s(self) -> float:
        """The silence that closes the current segment, adapted to this speaker's pauses."""
        o = self.options
        if len(self._pauses) < o.min_pauses_to_adapt:
            return o.default_end_pause_s
        typical = float(np.percentile(self._pauses, o.pause_percentile))
        return min(max(o.pause_factor * typical, o.min_end_pause_s), o.max_end_pause_s)

    # -- input ------------------------------------------------------------------------------------
    def feed(self, audio: npt.NDArray[np.floating] | bytes) -> list[Segment]:
        """Audio at `input_rate`: float32 samples in [-1, 1] or PCM16 little-endian bytes."""
        if self._flushed:
            raise RuntimeError("the segmenter was flushed: start a new one for a new stream")
        samples = pcm16_to_float(audio) if isinstance(audio, bytes) else np.asarray(audio, dtype=np.float32)
        return self._consume(self._resampler.feed(samples.ravel()))

    def flush(self) -> list[Segment]:
        """End of stream: analyse what is left and close the open segment."""
        if self._flushed:
            return []
        segments = self._consume(self._resampler.flush())
        self._flushed = True
        if self._in_segment and self._last_voiced_end is not None:
            stream_end = self._audio_start + self._audio.size
            end = min(self._last_voiced_end + self._seconds(self.options.post_roll_s), stream_end)
            segments += self._close(end, self._last_voiced_end, "flush")
        return segments

    # -- internals --------------------------------------------------------------------------------
    def _make_classifier(self) -> FrameClassifier:
        if self.options.vad == "silero":
            return SileroClassifier(self.options.silero_threshold)
        return WebRtcClassifier(self.options.frame_ms, self.options.vad_aggressiveness)

    @staticmethod
    def _seconds(seconds: float) -> int:
        return round(seconds * SAMPLE_RATE)

    def _consume(self, samples: Samples) -> list[Segment]:
        self._audio = np.concatenate([self._audio, samples])
        segments: list[Segment] = []
        end = self._audio_start + self._audio.size
        while self._framed + self._frame <= end:
            start = self._framed
            frame = self._audio[start - self._audio_start : start - self._audio_start + self._frame]
            self._framed += self._frame
            segments += self._on_frame(start, frame)
        self._trim()
        return segments

    def _on_frame(self, start: int, frame: Samples) -> list[Segment]:
        voiced = self._is_voiced(frame)
        end = start + self._frame
        if not self._in_segment:
            self._onset.append((start, voiced))
            if sum(v for _, v in self._onset) >= self.options.onset_frames:
                return self._first_onset(next(s for s, v in self._onset if v), end)
            return self._review_start(start, rms_dbfs(frame)) if self._start_under_review else []
        if voiced:
            self._on_voiced(end)
            if end - self._segment_start >= self._seconds(self.options.max_segment_s):
                return self._cut_at_quiet_point(end)
            return []
        self._silence += self._frame
        reason: CutReason | None = "pause" if self._silence >= self._seconds(self.end_pause_s) else None
        if reason is None and self._turn_complete(end):
            reason = "turn_end"
        if reason is not None:
            assert self._last_voiced_end is not None
            speech_end = self._extend(self._last_voiced_end, self._frame, end)
            closing = min(speech_end + self._seconds(self.options.post_roll_s), end)
            return self._close(closing, speech_end, reason)
        if end - self._segment_start >= self._seconds(self.options.max_segment_s):
            return self._cut_at_quiet_point(end)
        return []

    def _turn_complete(self, end: int) -> bool:
        """Ask Smart Turn once per pause, on the frame where the pause reaches turn_check_pause_s."""
        check = self._seconds(self.options.turn_check_pause_s)
        if self._turn is None or not self._silence - self._frame < check <= self._silence:
            return False
        return self._turn.complete(self._slice(max(self._segment_start, end - WINDOW_SAMPLES), end))

    def _review_start(self, frame_start: int, energy: float) -> list[Segment]:
        """Before any segment, at each pause: the stream's start again, against the floor the pause shows; a
        phrase among its frames is the stream's first segment."""
        if frame_start >= self._seconds(self.options.max_segment_s):
            self._start_under_review = False  # long enough: the start is kept no longer
            return []
        floor, highest = self._noise.dbfs, self._highest_floor
        if floor is None or highest is None or energy >= highest - self.options.noise_gate_db:
            self._quiet_since = None
            return []
        if self._quiet_since is None:
            self._quiet_since = frame_start
        if frame_start + self._frame - self._quiet_since != self._seconds(REVIEW_PAUSE_S) // self._frame * self._frame:
            return []  # judged once per pause, when it is long enough
        pause = max(rms_dbfs(self._slice(self._quiet_since, frame_start + self._frame)), NOISE_FLOOR_MIN_DBFS)
        return self._phrase_before(self._quiet_since, min(floor, pause), frame_start + self._frame)

    def _phrase_before(self, limit: int, floor: float, frame_end: int) -> list[Segment]:
        """The phrase among the kept start's frames before `limit` that are voice against `floor`, as a segment
        (the review ends there), or nothing."""
        voiced = self._voiced_again(range(self._audio_start, limit - self._frame + 1, self._frame), floor)
        onset = first_onset(voiced, self._frame, self.options.onset_window_frames, self.options.onset_frames)
        if onset is None:
            return []
        speech_start = self._extend(onset, -self._frame, self._audio_start)
        speech_end = self._extend(voiced[-1] + self._frame, self._frame, limit)
        if speech_end - speech_start < self._seconds(self.options.min_speech_s):
            return []
        self._start_under_review = False
        start = max(speech_start - self._seconds(self.options.pre_roll_s), self._audio_start)
        end = min(speech_end + self._seconds(self.options.post_roll_s), frame_end)
        self._previous_end = end
        return [self._segment(start, end, speech_start, speech_end, "pause")]

    def _voiced_again(self, starts: range, floor: float) -> list[int]:
        """The frames (by start) that are voice against `floor`; a fresh classifier, as Silero keeps state."""
        classifier = self._make_classifier()
        gate = floor + self.options.noise_gate_db
        frames = ((s, self._slice(s, s + self._frame)) for s in starts)
        return [s for s, frame in frames if rms_dbfs(frame) >= gate and classifier.is_speech(frame)]

    def _is_voiced(self, frame: Samples) -> bool:
        energy = rms_dbfs(frame)
        floor = self._noise.dbfs
        self._noise.add(energy)
        if self._start_under_review and floor is not None:
            self._highest_floor = max(floor, self._highest_floor if self._highest_floor is not None else floor)
        if floor is None or energy < floor + self.options.noise_gate_db:
            return False
        return self._classifier.is_speech(frame)

    def _first_onset(self, voice_start: int, frame_end: int) -> list[Segment]:
        """Speech starts: while the stream's start is under review, a phrase before it that a pause too short to
        review hid is its own segment first (against the floor now, which has seen that pause)."""
        floor = self._noise.dbfs
        earlier = []
        if self._start_under_review and floor is not None:
            earlier = self._phrase_before(voice_start - self._seconds(self.options.pre_roll_s), floor, voice_start)
        self._open(voice_start, frame_end)
        return earlier

    def _open(self, voice_start: int, frame_end: int) -> None:
        earliest = max(self._previous_end, self._audio_start)
        speech_start = self._extend(voice_start, -self._frame, earliest)
        self._segment_start = max(speech_start - self._seconds(self.options.pre_roll_s), earliest)
        self._speech_start = speech_start
        self._in_segment = True
        self._start_under_review = False
        self._onset.clear()
        self._last_voiced_end = frame_end  # the onset fires on a voiced frame
        self._silence = 0

    def _extend(self, edge: int, step: int, limit: int) -> int:
        """Move a speech edge by whole frames (step < 0: backwards) over audio above the extension gate,
        bridging gaps up to EXTEND_BRIDGE_S (the closure before a final "k" or "t" burst)."""
        floor = self._noise.dbfs
        if floor is None:
            return edge
        gate = floor + self.options.extend_gate_db
        bridge = self._seconds(EXTEND_BRIDGE_S) // self._frame
        probe, gap = edge, 0
        while gap <= bridge:
            nxt = probe + step
            if (nxt > limit) if step > 0 else (nxt < limit):
                break
            frame = self._slice(min(probe, nxt), max(probe, nxt))
            if frame.size < self._frame:
                break
            probe, gap = nxt, gap + 1
            if rms_dbfs(frame) >= gate:
                edge, gap = probe, 0
        return edge

    def _on_voiced(self, frame_end: int) -> None:
        if self._silence >= self._seconds(self.options.min_counted_pause_s):
            self._pauses.append(self._silence / SAMPLE_RATE)
        self._silence = 0
        self._last_voiced_end = frame_end

    def _close(self, end: int, speech_end: int, reason: CutReason) -> list[Segment]:
        self._in_segment = False
        self._silence = 0
        if speech_end - self._speech_start < self._seconds(self.options.min_speech_s):
            return []
        self._previous_end = end
        return [self._segment(self._segment_start, end, self._speech_start, speech_end, reason)]

    def _cut_at_quiet_point(self, frame_end: int) -> list[Segment]:
        """At the maximum length: cut at the quietest instant of the last CUT_SEARCH_S, not mid-word."""
        limit = min(frame_end, self._segment_start + self._seconds(self.options.max_segment_s))
        search_from = limit - self._seconds(self.options.cut_search_s)
        cut = search_from + quietest_point(self._slice(search_from, limit), self._seconds(QUIET_WINDOW_S))
        assert self._last_voiced_end is not None
        speech_end = min(self._last_voiced_end, cut)
        segment = self._segment(self._segment_start, cut, self._speech_start, speech_end, "max_length")
        self._previous_end = cut
        self._segment_start = self._speech_start = cut
        return [segment]

    def _segment(self, start: int, end: int, speech_start: int, speech_end: int, reason: CutReason) -> Segment:
        return Segment(self._slice(start, end).copy(), start, end, speech_start, speech_end, reason)

    def _slice(self, start: int, end: int) -> Samples:
        return self._audio[start - self._audio_start : end - self._audio_start]

    def _trim(self) -> None:
        """Keep only what a segment may still need: the open segment, or the pre-roll before an onset."""
        if self._in_segment:
            keep_from = self._segment_start
        elif self._start_under_review:
            keep_from = self._audio_start
        else:
            lookback = self._seconds(self.options.pre_roll_s) + self.options.onset_window_frames * self._frame
            keep_from = max(self._framed - lookback, self._audio_start)
        self._audio = self._audio[keep_from - self._audio_start :]
        self._audio_start = keep_from


def first_onset(voiced_starts: list[int], frame: int, window: int, needed: int) -> int | None:
    """The first voiced frame of the first `window` frames holding `needed` voiced ones, as the live onset rule
    finds it (`voiced_starts`: the start samples of voiced frames, in order)."""
    for i, start in enumerate(voiced_starts):
        if i + needed <= len(voiced_starts) and voiced_starts[i + needed - 1] - start < window * frame:
            return start
    return None


def quietest_point(samples: Samples, window: int) -> int:
    """Index of the centre of the lowest-energy `window` in `samples` (a cut there splits no word)."""
    if samples.size <= window:
        return samples.size // 2
    power = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    energy = power[window:] - power[:-window]
    return int(np.argmin(energy)) + window // 2
