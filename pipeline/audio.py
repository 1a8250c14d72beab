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
    """Mono float32 at `rate`, whatever the file's rate and channel count."""
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(data.mean(axis=1), int(file_rate), rate)


def write_wav(path: str | Path, samples: npt.NDArray[np.floating], rate: int = SAMPLE_RATE) -> None:
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")


def rms_dbfs(samples: npt.NDArray[np.floating]) -> float:
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return float(20.0 * np.log10(max(rms, 1e-6)))
