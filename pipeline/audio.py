"""Audio helpers shared by the gateway, the workers and the tests: PCM16 <-> float, resampling, WAV."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
from scipy.signal import resample_poly

from pipeline.messages import SAMPLE_RATE

Samples = npt.NDArray[np.float32]

# Voice pitch range searched by median_f0_hz: a deep bass to a child's voice.
F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
YIN_THRESHOLD = 0.15  # YIN's dip threshold: frames with no dip this deep are unvoiced


def pcm16_to_float(pcm: bytes) -> Samples:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: npt.NDArray[np.floating]) -> bytes:
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return bytes((clipped * 32768.0).astype("<i2").tobytes())


def resample(samples: npt.NDArray[np.floating], rate_in: int, rate_out: int) -> Samples:
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    g = gcd(rate_in, rate_out)
    resampled: Samples = resample_poly(samples, rate_out // g, rate_in // g).astype(np.float32)
    return resampled


def read_wav(path: str | Path, rate: int = SAMPLE_RATE) -> Samples:
    """Mono float32 at `rate`, whatever the file's rate and channel count. A file that is not audio
    libsndfile can read is a ValueError naming it."""
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise ValueError(f"{path}: not a readable audio file ({exc.error_string})") from exc
    return resample(data.mean(axis=1), int(file_rate), rate)


def write_wav(path: str | Path, samples: npt.NDArray[np.floating], rate: int = SAMPLE_RATE) -> None:
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")


def rms_dbfs(samples: npt.NDArray[np.floating]) -> float:
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return float(20.0 * np.log10(max(rms, 1e-6)))


def median_f0_hz(samples: Samples, rate: int = SAMPLE_RATE) -> float:
    """Median F0 of the voiced frames, 0.0 when nothing is voiced. YIN: the cumulative-mean-normalized
    difference function, whose first dip under the threshold is the period; it avoids the octave errors
    plain autocorrelation makes on low voices."""
    size, hop = int(0.04 * rate), int(0.01 * rate)
    if samples.size < size:
        return 0.0
    n = 1 + (samples.size - size) // hop
    idx = np.arange(size)[None, :] + hop * np.arange(n)[:, None]
    frames = samples[idx].astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.sum(frames**2, axis=1)
    frames = frames[energy > energy.max() * 1e-3]
    hi = min(int(rate / F0_MIN_HZ), size - 1)
    lo = int(rate / F0_MAX_HZ)
    # d(tau) = sum_j (x_j - x_{j+tau})^2 over the overlap, from prefix energies and the autocorrelation.
    acf = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * size, axis=1)) ** 2, axis=1)[:, : hi + 1]
    prefix = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(hi + 1)
    diff = prefix[:, size - taus] + (prefix[:, -1:] - prefix[:, taus]) - 2 * acf
    cmndf = diff[:, 1:] * taus[1:] / np.maximum(np.cumsum(diff[:, 1:], axis=1), 1e-12)
    periods = [p for row in cmndf if (p := _yin_period(row, lo - 1)) > 0]
    return float(np.median(rate / np.asarray(periods))) if periods else 0.0


def _yin_period(cmndf: npt.NDArray[np.float64], lo: int) -> float:
    """The first dip under YIN_THRESHOLD (lag index + 1, parabolically refined), or 0 when unvoiced."""
    below = np.flatnonzero(cmndf[lo:] < YIN_THRESHOLD)
    if below.size == 0:
        return 0.0
    i = lo + int(below[0])
    while i + 1 < cmndf.size and cmndf[i + 1] < cmndf[i]:
        i += 1
    if 0 < i < cmndf.size - 1:
        a, b, c = cmndf[i - 1], cmndf[i], cmndf[i + 1]
        denom = a - 2 * b + c
        return i + 1 + (0.5 * (a - c) / denom if denom else 0.0)
    return float(i + 1)
