"""Fitting synthetic speech to the speaker: trimmed, pitch moved toward theirs, duration fitted to the source.

`time_stretch` is WSOLA (waveform-similarity overlap-add): it changes duration, not pitch, so translated speech can
be fitted to the source segment's length for timing and lip-sync. `shift_pitch` resamples then stretches back,
moving the voice's median F0 toward the speaker's when the participant opted in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.signal import resample as fft_resample

from pipeline.audio import Samples, median_f0_hz, resample
from pipeline.messages import SAMPLE_RATE, Phoneme
from workers.engines.tts.base import MAX_TEMPO, MIN_TEMPO, PITCH_STRENGTH, Audio, TtsOptions

MIN_PITCH_RATIO = 0.6
MAX_PITCH_RATIO = 1.7
# Leading/trailing audio this far below the peak is silence the engine padded with.
TRIM_DB = 40.0

# WSOLA at 16 kHz: 30 ms windows, half overlap, +-8 ms search for the best-aligned continuation.
WSOLA_FRAME_S = 0.030
WSOLA_TOLERANCE_S = 0.008


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
