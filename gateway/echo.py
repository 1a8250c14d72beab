"""The echo guard: a participant's microphone must not hand back what the room played to them.

On loudspeakers, what a participant hears (their language's feed, and the original voices they subscribed
to at their gains) reaches their microphone again 50-800 ms later (network, jitter buffer, output and input
buffers, air; more on a loaded gateway), quieter and reverberant. Translated, that echo would come back to
the room as their speech; with two loudspeakers the room would talk to itself. Browser echo cancellation
leaves residual echo, and some browsers and headsets do none, so the gateway checks for itself: it knows
what it played to whom.

A segment is compared with that reference as power spectrograms (32 ms frames, 16 ms hop, 100 Hz-4 kHz at
16 kHz). The reference is spread over a reverberation tail (REVERB_S); for each lag in ECHO_MIN_LAG_S ..
ECHO_MAX_LAG_S (gateway/options.py) it is scaled by least squares, and each cell of the segment counts as
explained up to MARGIN times the scaled reference. A segment whose energy is at least ECHO_SHARE explained
at its best lag is echo: not translated, not captioned, not voiced, and it never takes the floor.
Own speech lies in cells the reference leaves dark, so it passes, also while something plays (double talk)
and right after. From such speech the echo is then taken out before recognition (`suppress`): each cell
loses the power the scaled, aligned reference puts there, so the recogniser hears the speaker, not the
translation under their words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gateway.options import EchoOptions
from gateway.playout import OUTPUT_RATE
from pipeline.audio import Samples, resample
from pipeline.messages import SAMPLE_RATE

if TYPE_CHECKING:
    from gateway.rooms import Participant, Room

log = logging.getLogger(__name__)

REVERB_S = 0.4  # RT60 of a furnished room: its echo dies away 60 dB in this time
MARGIN = 2.0  # a cell is explained up to 3 dB above the scaled reference (Opus, level drift)
MAX_GAIN = 4.0  # an echo louder than this (12 dB) over what was played is no echo
REFERENCE_FLOOR_DB = 50.0  # reference cells this far under its loudest are silence, not something heard
HISTORY_S = 14.0  # what was played stays this long: the longest segment (10 s) plus the longest lag
OPEN_CHECK_S = 0.5  # an onset is judged once this much of it is in (shorter says too little)
OPEN_GROWTH = 1.5  # an onset judged echo is judged again once it has grown by half (it may turn into speech)
LOUD_RMS = 1e-3  # about -60 dBFS: a frame of someone's voice louder than this was "played" to their listeners
ORIGINAL_UNDER_GAIN = 0.2  # the room page plays others' voices at this gain under the translation (room.js)

MIN_SPEECH_S = 0.5  # a segment's start is cut as echo only when at least this much is left after it
QUIET_FRAME = 0.01  # a frame under this share of the segment's loudest frame is silence, part of an echo's tail
FRAME_ECHO_SHARE = 0.5  # a frame at least this much explained is echo (one frame says less than a segment)
KEEP_BEFORE_S = 0.25  # of a cut echo, what stays before the speaker's sound (the segmenter's pre-roll)
OWN_RUN = 3  # frames (48 ms) mostly unexplained in a row: the speaker's own sound has begun
KNOWN_LAG_SLACK = 3  # hops (48 ms) either way: jitter buffers move
SUPPRESS_FROM = 0.05  # speech this much explained holds echo worth taking out before recognition
# A cell loses the echo estimate's power, no more: twice that cut the speaker's words too (offline double talk
# through Opus and a simulated loudspeaker, Whisper base: recall 0.58 unsuppressed, 0.58 at 2.0, 0.77 at 1.0).
OVER_SUBTRACT = 1.0
SUPPRESSION_FLOOR = 0.05  # no cell is cut below -26 dB: holes in the spectrum would sound like bubbles
FRAME = 512  # 32 ms at 16 kHz
HOP = 256  # 16 ms
LOW_BIN, HIGH_BIN = 3, 129  # 94 Hz .. 4 kHz: where speech energy is
WINDOW = np.hanning(FRAME).astype(np.float32)
# The square root of a periodic Hann window, on analysis and on synthesis: at 50 % overlap their product sums
# to one, so a spectrum left as it is resynthesises to the same samples.
ROOT_HANN = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)


@dataclass(frozen=True)
class Verdict:
    echo: bool
    explained: float  # the share of the segment's energy the reference explains at the best lag
    lag_s: float
    leading_samples: int = 0  # speech that follows the echo's tail: this much of its start is echo (16 kHz)
    cleaned: Samples | None = None  # speech with echo in it: the same audio with the echo taken out


@dataclass
class EchoStats:
    segments_checked: int = 0
    segments_echo: int = 0  # dropped as echo
    segments_trimmed: int = 0  # speech that began with the echo's tail: sent without it
    onsets_checked: int = 0  # open segments judged before they could take the floor
    onsets_echo: int = 0


class AudioHistory:
    """The last HISTORY_S of one participant's voice as the gateway received it (48 kHz), on the wall clock."""

    def __init__(self, seconds: float = HISTORY_S, rate: int = OUTPUT_RATE) -> None:
        self.rate = rate
        self._ring = np.zeros(round(seconds * rate), dtype=np.float32)
        self._written = 0  # samples ever written
        self._last_at = 0.0  # wall time of the last sample written
        self.loud_at = 0.0  # wall time of the last loud frame

    def append(self, samples: Samples, now: float) -> None:
        n = min(samples.size, self._ring.size)
        index = (self._written + np.arange(n)) % self._ring.size
        self._ring[index] = samples[-n:]
        self._written += n
        self._last_at = now
        if n and float(np.sqrt(np.mean(np.square(samples)))) > LOUD_RMS:
            self.loud_at = now

    def window(self, start: float, count: int) -> Samples:
        """`count` samples from wall time `start`; silence where nothing was received (or kept)."""
        first = self._written - round((self._last_at - start) * self.rate)
        out = np.zeros(count, dtype=np.float32)
        lo, hi = max(first, self._written - self._ring.size), min(first + count, self._written)
        if lo < hi:
            out[lo - first : hi - first] = self._ring[np.arange(lo, hi) % self._ring.size]
        return out


@dataclass
class _Onset:
    start_sample: int
    checked_samples: int
    echo: bool


@dataclass
class EchoGuard:
    options: EchoOptions = field(default_factory=EchoOptions)
    stats: EchoStats = field(default_factory=EchoStats)
    _voices: dict[str, AudioHistory] = field(default_factory=dict)
    _onsets: dict[str, _Onset] = field(default_factory=dict)
    _lags: dict[str, int] = field(default_factory=dict)  # each participant's echo path, in hops, once found

    # -- what was played ------------------------------------------------------------------------------
    def heard(self, participant_id: str, samples: Samples, now: float) -> None:
        """A participant's voice reached the gateway: their listeners hear it (as the original) from now."""
        self._voices.setdefault(participant_id, AudioHistory()).append(samples, now)

    def forget(self, participant_id: str) -> None:
        self._voices.pop(participant_id, None)
        self._onsets.pop(participant_id, None)
        self._lags.pop(participant_id, None)

    def reference(self, room: Room, listener: Participant, start: float, seconds: float) -> Samples:
        """What the gateway played to `listener` from wall time `start`: their feed and voices they hear, 16 kHz."""
        count = round(seconds * OUTPUT_RATE)
        played = np.zeros(count, dtype=np.float32)
        timeline = room.timelines.get(listener.profile.hear)
        if timeline is not None:  # from before the timeline began too (silence there): sample_at stops at 0
            played += timeline.render(round((start - timeline.origin) * timeline.options.rate), count)
        for other_id, gain in self._voices_heard_by(room, listener):
            played += gain * self._voices[other_id].window(start, count)
        return resample(played, OUTPUT_RATE, SAMPLE_RATE)

    def played_since(self, room: Room, listener: Participant, since: float) -> bool:
        """Whether anything was played to the listener after wall time `since` (or plays still)."""
        timeline = room.timelines.get(listener.profile.hear)
        if timeline is not None and timeline.stats.scheduled and timeline.tail_time > since:
            return True
        return any(self._voices[o].loud_at > since for o, _ in self._voices_heard_by(room, listener))

    def _voices_heard_by(self, room: Room, listener: Participant) -> list[tuple[str, float]]:
        """The others whose voices the listener's page plays, with its gains (room.js wantedStreams)."""
        heard = []
        for other in room.participants.values():
            if other.id == listener.id or other.id not in self._voices:
                continue
            if other.profile.speak == listener.profile.hear:
                heard.append((other.id, 1.0))
            elif listener.profile.hear_original:
                heard.append((other.id, ORIGINAL_UNDER_GAIN))
        return heard

    # -- verdicts -------------------------------------------------------------------------------------
    def judge(
        self, room: Room, speaker: Participant, audio: Samples, end_at: float, clean: bool = False
    ) -> Verdict | None:
        """Is this audio (16 kHz, received until wall time `end_at`) an echo of what `speaker` was played?
        None when nothing was played to them in its time: no echo, and nothing to compute. `clean`: speech with
        echo in it comes with the echo taken out (closed segments only: an onset's verdict is all it needs)."""
        o = self.options
        duration = audio.size / SAMPLE_RATE
        start = end_at - duration - o.max_lag_s
        if not self.played_since(room, speaker, start):
            return None
        reference = self.reference(room, speaker, start, duration + o.max_lag_s - o.min_lag_s)
        fit = explained_share(audio, reference, o, self._lags.get(speaker.id))
        if fit.share >= o.echo_share:  # pure echo: its lag is this participant's echo path
            self._lags[speaker.id] = fit.lag
        leading = max(0, fit.leading_frames * HOP - round(KEEP_BEFORE_S * SAMPLE_RATE))
        if audio.size - leading < MIN_SPEECH_S * SAMPLE_RATE:
            leading = 0
        echo = fit.share >= o.echo_share
        cleaned = suppress(audio, reference, fit, o) if clean and not echo and fit.share >= SUPPRESS_FROM else None
        return Verdict(echo, fit.share, fit.lag * HOP / SAMPLE_RATE, leading, cleaned)

    def check(self, room: Room, speaker: Participant, audio: Samples, end_at: float) -> Verdict | None:
        """A closed segment: judged, and counted, when something was played to the speaker in its time."""
        self._onsets.pop(speaker.id, None)
        verdict = self.judge(room, speaker, audio, end_at, clean=True) if self.options.enabled else None
        if verdict is None:
            return None
        self.stats.segments_checked += 1
        self.stats.segments_echo += verdict.echo
        self.stats.segments_trimmed += not verdict.echo and verdict.leading_samples > 0
        log.info(
            "%s: a segment of %.1f s, %.0f%% explained by what they were played %.2f s earlier: %s",
            speaker.profile.name, audio.size / SAMPLE_RATE, 100 * verdict.explained, verdict.lag_s,
            "echo, dropped" if verdict.echo else f"speech, after {verdict.leading_samples / SAMPLE_RATE:.1f} s of echo",
        )  # fmt: skip
        return verdict

    def onset_is_echo(self, room: Room, speaker: Participant, start_sample: int, audio: Samples, now: float) -> bool:
        """The open segment so far: echo, or too early to tell while something was played in its time (then
        it may not take the floor yet). Speech once found stays speech; an echo is judged again as it grows."""
        if not self.options.enabled:
            return False
        onset = self._onsets.get(speaker.id)
        if onset is not None and onset.start_sample == start_sample:
            if not onset.echo or audio.size < onset.checked_samples * OPEN_GROWTH:
                return onset.echo
        elif not self.played_since(room, speaker, now - audio.size / SAMPLE_RATE - self.options.max_lag_s):
            return False
        if audio.size < OPEN_CHECK_S * SAMPLE_RATE:
            return True
        verdict = self.judge(room, speaker, audio, now)
        echo = verdict is not None and verdict.echo
        self._onsets[speaker.id] = _Onset(start_sample, audio.size, echo)
        self.stats.onsets_checked += 1
        self.stats.onsets_echo += echo
        return echo


def power_frames(samples: Samples) -> np.ndarray:
    """Power spectrogram, frames x bins, of the speech band."""
    count = 1 + (samples.size - FRAME) // HOP
    if count <= 0:
        return np.zeros((0, HIGH_BIN - LOW_BIN), dtype=np.float32)
    index = np.arange(FRAME)[None, :] + HOP * np.arange(count)[:, None]
    spectrum = np.fft.rfft(samples[index] * WINDOW, axis=1)[:, LOW_BIN:HIGH_BIN]
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def with_tail(power: np.ndarray) -> np.ndarray:
    """The reference as a reverberant room keeps it: each cell at least its predecessor decayed by
    60 dB over REVERB_S (a room's RT60)."""
    spread = power.copy()
    decay = 10 ** (-6 * HOP / SAMPLE_RATE / REVERB_S)
    for t in range(1, spread.shape[0]):
        np.maximum(spread[t], spread[t - 1] * decay, out=spread[t])
    return spread


@dataclass(frozen=True)
class Fit:
    share: float  # of the audio's energy, explained at the best lag
    lag: int  # hops
    leading_frames: int  # frames at the start that are echo (or silence after it) before anything else
    gain2: float = 0.0  # the reference's power times this is the echo's


def explained_share(audio: Samples, reference: Samples, options: EchoOptions, known_lag: int | None = None) -> Fit:
    """The largest share of `audio`'s energy that the scaled, aligned reference explains, its lag, and how
    much of the audio's start is echo at that lag. A participant's echo path keeps its lag, so the best fit
    within KNOWN_LAG_SLACK of `known_lag` is taken unless another lag finds pure echo (the path changed): a
    quiet echo under louder speech is outexplained by some chance alignment of the reference with that speech.

    `reference` starts `max_lag_s` before `audio` and ends `min_lag_s` before its end. Every lag is tried: the
    spectra cost more than the lags (7.5 ms for a 5 s segment judged at 4 lags its envelopes suggested, 11.9 ms
    at all 185), and an echo under louder speech misleads any shortcut (it fitted a wrong lag).
    """
    x = power_frames(audio)
    total = float(x.sum())
    r = power_frames(reference)
    if total <= 0.0 or not r.size or not r.any():
        return Fit(0.0, 0, 0)
    r[r < r.max() * 10 ** (-REFERENCE_FLOOR_DB / 10)] = 0.0
    r = with_tail(r)
    max_lag = round(options.max_lag_s * SAMPLE_RATE / HOP)
    min_lag = round(options.min_lag_s * SAMPLE_RATE / HOP)
    r = np.pad(r, ((0, max(0, x.shape[0] + max_lag - min_lag - r.shape[0])), (0, 0)))
    best = at_known = Fit(0.0, 0, 0)
    for lag in range(min_lag, max_lag + 1):
        aligned = r[max_lag - lag : max_lag - lag + x.shape[0]]
        power = float(np.vdot(aligned, aligned))
        if power <= 0.0:
            continue
        gain2 = min(float(np.vdot(x, aligned)) / power, MAX_GAIN**2)
        explained = np.minimum(x, MARGIN * gain2 * aligned).sum(axis=1)
        share = float(explained.sum()) / total
        near_known = known_lag is not None and abs(lag - known_lag) <= KNOWN_LAG_SLACK
        if share <= best.share and not (near_known and share > at_known.share):
            continue
        fit = Fit(share, lag, _leading_echo(x.sum(axis=1), explained), gain2)
        best = fit if share > best.share else best
        at_known = fit if near_known and share > at_known.share else at_known
    return at_known if at_known.share > 0 and best.share < options.echo_share else best


def suppress(audio: Samples, reference: Samples, fit: Fit, options: EchoOptions) -> Samples:
    """`audio` less the echo `fit` found: power subtraction of the scaled, aligned, reverberant reference, per
    cell of a short-time spectrum (all bins, not only the speech band the fit looked at), then resynthesis."""
    x = spectrum(audio)
    r = power_of(spectrum(reference))
    r[r < r.max() * 10 ** (-REFERENCE_FLOOR_DB / 10)] = 0.0
    r = with_tail(r)
    max_lag = round(options.max_lag_s * SAMPLE_RATE / HOP)
    r = np.pad(r, ((0, max(0, x.shape[0] + max_lag - fit.lag - r.shape[0])), (0, 0)))
    echo = fit.gain2 * r[max_lag - fit.lag : max_lag - fit.lag + x.shape[0]]
    keep = 1.0 - OVER_SUBTRACT * echo / np.maximum(power_of(x), 1e-12)
    gains = np.sqrt(np.clip(keep, SUPPRESSION_FLOOR**2, 1.0)).astype(np.float32)
    return resynthesise(x * gains, audio.size)


def spectrum(samples: Samples) -> np.ndarray:
    """Short-time spectrum, frames x all bins, ROOT_HANN-windowed. A first frame starts half a frame before
    the samples (so every sample lies in two frames); frame t + 1 then covers what power_frames' frame t does."""
    padded = np.pad(samples, (HOP, FRAME))
    count = 1 + (padded.size - FRAME) // HOP
    index = np.arange(FRAME)[None, :] + HOP * np.arange(count)[:, None]
    frames: np.ndarray = np.fft.rfft(padded[index] * ROOT_HANN, axis=1)
    return frames


def power_of(spectrum: np.ndarray) -> np.ndarray:
    power: np.ndarray = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return power


def resynthesise(spectrum: np.ndarray, count: int) -> Samples:
    """`count` samples from `spectrum` by overlap-add: the inverse of `spectrum` for a spectrum left as it was."""
    frames = np.fft.irfft(spectrum, n=FRAME, axis=1).astype(np.float32) * ROOT_HANN
    out = np.zeros(HOP * (frames.shape[0] + 1), dtype=np.float32)
    for t, frame in enumerate(frames):
        out[t * HOP : t * HOP + FRAME] += frame
    return out[HOP : HOP + count]


def _leading_echo(energy: np.ndarray, explained: np.ndarray) -> int:
    """Frames at the start before the speaker's own sound (OWN_RUN frames in a row mostly unexplained), when
    they hold some echo."""
    loud = energy >= QUIET_FRAME * energy.max()
    own = loud & (explained < FRAME_ECHO_SHARE * energy)
    runs = np.convolve(own.astype(np.int32), np.ones(OWN_RUN, np.int32), mode="valid")
    starts = np.flatnonzero(runs == OWN_RUN)
    if not starts.size:
        return 0
    first_own = int(starts[0])
    return first_own if bool((loud & ~own)[:first_own].any()) else 0
