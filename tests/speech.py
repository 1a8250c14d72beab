"""Real speech for tests, synthesized on the spot with espeak-ng or the bundled Piper voice."""

from __future__ import annotations

import numpy as np

from benchmarks.asr_context import espeak as espeak  # the espeak-ng command, shared with the benchmark
from pipeline.audio import Samples
from pipeline.messages import SAMPLE_RATE


def silence(seconds: float) -> Samples:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def with_noise(samples: Samples, snr_db: float, seed: int = 0) -> Samples:
    """White noise added at `snr_db` below the speech's RMS."""
    rng = np.random.default_rng(seed)
    speech_rms = float(np.sqrt(np.mean(samples[np.abs(samples) > 1e-4] ** 2)))
    noise = rng.standard_normal(samples.size).astype(np.float32) * speech_rms * 10 ** (-snr_db / 20)
    return (samples + noise).astype(np.float32)
