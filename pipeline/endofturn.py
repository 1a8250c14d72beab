"""End-of-turn detection with Smart Turn v3: has the speaker finished, or only paused?

Smart Turn v3 (pipecat-ai, BSD-2) is an 8.7 MB ONNX classifier over Whisper log-mel features of the last
up-to-8 s of 16 kHz speech. It ships inside the `pipecat-ai` wheel, which is installed without its
dependencies (`pip install --no-deps pipecat-ai`, as `make up` does): the model file is read from the
package's folder, and nothing of pipecat is imported. The features are computed here with numpy
(Whisper's: 25 ms Hann windows every 10 ms, 80 Slaney mel bands, log10, an 8-decade floor, scaled).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.messages import SAMPLE_RATE

log = logging.getLogger(__name__)

MODEL_PACKAGE = "pipecat"
MODEL_FILE = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
INSTALL_HINT = "pip install --no-deps 'pipecat-ai==1.14.0'"
WINDOW_S = 8  # the model sees the last 8 s, zero-padded at the start when shorter
COMPLETE_THRESHOLD = 0.5  # the model's probability that the turn is complete

N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 80
LOG_FLOOR_DECADES = 8.0
_NORMALIZE_EPS = 1e-7


class ModelUnavailable(RuntimeError):
    """The Smart Turn model file is not installed; the message says how to install it."""


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # locates the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise ModelUnavailable(f"the Smart Turn v3 model is not installed: {INSTALL_HINT}")


def _slaney_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Hz to Slaney mels: linear below 1 kHz, logarithmic above."""
    linear = 3.0 * hz / 200.0
    return np.where(hz < 1000.0, linear, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4))


def _slaney_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


@functools.cache
def mel_filters() -> npt.NDArray[np.float64]:
    """(N_MELS, N_FFT // 2 + 1) triangles evenly spaced in Slaney mels from 0 to 8 kHz, area-normalised."""
    edges = _slaney_hz(np.linspace(0.0, float(_slaney_mel(np.array(SAMPLE_RATE / 2))), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def log_mel(audio: npt.NDArray[np.floating], seconds: int = WINDOW_S) -> npt.NDArray[np.float32]:
    """Whisper log-mel features (N_MELS, seconds * 100) of the last `seconds` of 16 kHz audio, normalised
    to zero mean and unit variance first, as Smart Turn was trained."""
    length = seconds * SAMPLE_RATE
    x = np.asarray(audio, dtype=np.float32)[-length:]
    x = np.pad(x, (length - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + _NORMALIZE_EPS)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = np.log10(np.maximum(mel_filters() @ power.T, 1e-10))[:, :-1]  # Whisper drops the last frame
    mel = np.maximum(mel, mel.max() - LOG_FLOOR_DECADES)
    features: npt.NDArray[np.float32] = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


class SmartTurn:
    """Blocking (~12 ms on a CPU core): call it where a pause is being judged, off any event loop."""

    def __init__(self, model_path: Path | None = None, threshold: float = COMPLETE_THRESHOLD) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        options.log_severity_level = 4
        path = model_path or bundled_model_path()
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=options)
        self.threshold = threshold

    def probability(self, audio: npt.NDArray[np.floating]) -> float:
        """The probability that the speaker finished their turn at the end of `audio` (16 kHz)."""
        outputs: list[Any] = self.session.run(None, {"input_features": log_mel(audio)[None]})
        return float(np.asarray(outputs[0]).ravel()[0])

    def complete(self, audio: npt.NDArray[np.floating]) -> bool:
        return self.probability(audio) > self.threshold


@functools.cache
def shared_smart_turn(threshold: float = COMPLETE_THRESHOLD) -> SmartTurn | None:
    """One model per process, shared by every speaker's segmenter; None (and a warning, once) when the model
    is not installed: the segmenter then closes on the adaptive pause alone."""
    try:
        return SmartTurn(threshold=threshold)
    except (ModelUnavailable, ImportError) as exc:
        log.warning("end of turn by pause only: %s", exc)
        return None
