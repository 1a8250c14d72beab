"""Inbound audio frames become float mono samples whatever layout the decoder hands over."""

from __future__ import annotations

import numpy as np
import pytest
from av import AudioFrame

from gateway.media.capture import mono_samples


def test_interleaved_stereo_s16_is_averaged_to_mono() -> None:
    left_right = np.array([[1000, 3000] * 4], dtype=np.int16)  # 4 stereo samples, interleaved
    frame = AudioFrame.from_ndarray(left_right, format="s16", layout="stereo")
    assert mono_samples(frame) == pytest.approx(np.full(4, 2000 / 32768), abs=1e-6)


def test_planar_float_is_taken_as_it_is() -> None:
    planes = np.array([[0.5, 0.5, 0.5], [-0.1, -0.1, -0.1]], dtype=np.float32)
    frame = AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
    assert mono_samples(frame) == pytest.approx(np.full(3, 0.2), abs=1e-6)


def test_an_unsupported_sample_format_is_a_clear_error() -> None:
    frame = AudioFrame.from_ndarray(np.zeros((1, 8), dtype=np.int32), format="s32", layout="stereo")
    with pytest.raises(ValueError, match="unsupported audio sample format 's32'"):
        mono_samples(frame)
