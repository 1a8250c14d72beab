"""The GPU lip-sync engine slot: Wav2Lip-96 (Prajwal et al., 2020) on torch, from the user's checkpoint.

The network is rebuilt layer for layer so the released checkpoints (`wav2lip.pth`, `wav2lip_gan.pth`:
`{"state_dict": {"module.<layer>": tensor}}`, saved from DataParallel) load with strict keys; any other
layout (the 192 or 256 variants, a SyncNet, a bare state dict of something else) is refused with the
keys that differ. The released weights are licensed for non-commercial use only: bring your own.

Per frame, as the original inference does: the face box (here from FaceMesh, smoothed over time) is
cut out and scaled to 96x96 (BGR, as the network was trained); the lower half is blanked and stacked
with the unmasked face (6 channels); the speech's mel spectrogram window of 16 frames (80 per second)
ending at that frame conditions the decoder. The generated face is scaled back and pasted in through a
feathered mask over the mouth and jaw only. Frames go through in batches, fp16 on CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import get_window, lfilter

from pipeline.audio import Samples, pcm16_to_float, resample
from pipeline.frames import Frame
from pipeline.messages import SynthesizedSpeech
from workers.engines.common import EngineUnavailable
from workers.engines.lipsync.base import LipSyncOptions, SyncedFrames, timeline
from workers.engines.lipsync.face import Landmarks, import_mediapipe, smooth_landmarks, track_faces

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - the message is the point
    raise EngineUnavailable("the wav2lip engine needs torch: pip install 'babelroom[gpu]'") from exc

FACE_SIZE = 96
# Wav2Lip's audio front end (its hparams.py): 16 kHz, 80 mel bands over 55-7600 Hz, 50 ms windows every
# 12.5 ms (80 frames a second), pre-emphasis, dB relative to 20 dB, scaled symmetrically to [-4, 4].
MEL_RATE = 16_000
N_FFT, HOP, WIN = 800, 200, 800
N_MELS, FMIN, FMAX = 80, 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0
MEL_STEP = 16  # mel frames per video frame's window
MEL_FRAMES_PER_S = MEL_RATE / HOP
FACE_PAD_BOTTOM = 0.08  # of the face height: the chin stays inside the box, as the original's padding does
MASK_FEATHER = 0.06  # of the box width


# --- the network -----------------------------------------------------------------------------------------


class Conv(nn.Module):
    """Conv, batch norm, ReLU; with `residual` the input is added before the ReLU (Wav2Lip's Conv2d)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: Any, padding: int, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        result: torch.Tensor = self.act(out + x if self.residual else out)
        return result


class UpConv(nn.Module):
    """Transposed conv, batch norm, ReLU (Wav2Lip's Conv2dTranspose)."""

    def __init__(self, cin: int, cout: int, stride: int, padding: int, output_padding: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 3, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.act(self.conv_block(x))
        return result


def _residuals(channels: int, count: int) -> list[nn.Module]:
    return [Conv(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _down(cin: int, cout: int, residuals: int, stride: Any = 2) -> list[nn.Module]:
    return [Conv(cin, cout, 3, stride, 1), *_residuals(cout, residuals)]


def _up(cin: int, cout: int, residuals: int, stride: int = 2) -> nn.Sequential:
    padding, output_padding = (1, 1) if stride == 2 else (0, 0)
    return nn.Sequential(UpConv(cin, cout, stride, padding, output_padding), *_residuals(cout, residuals))


class Wav2Lip96(nn.Module):
    """Face encoder 96 -> 1 (16 ... 512 channels), audio encoder 80x16 mel -> 512, decoder 1 -> 96 with a
    skip from each encoder level; output RGB (BGR in practice) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv(6, 16, 7, 1, 3)),  # 96
                nn.Sequential(*_down(16, 32, 2)),  # 48
                nn.Sequential(*_down(32, 64, 3)),  # 24
                nn.Sequential(*_down(64, 128, 2)),  # 12
                nn.Sequential(*_down(128, 256, 2)),  # 6
                nn.Sequential(*_down(256, 512, 1)),  # 3
                nn.Sequential(Conv(512, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0)),  # 1
            ]
        )
        self.audio_encoder = nn.Sequential(
            Conv(1, 32, 3, 1, 1),
            *_residuals(32, 2),
            *_down(32, 64, 2, stride=(3, 1)),
            *_down(64, 128, 2, stride=3),
            *_down(128, 256, 1, stride=(3, 2)),
            Conv(256, 512, 3, 1, 0),
            Conv(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv(512, 512, 1, 1, 0)),  # 1
                _up(1024, 512, 1, stride=1),  # 3
                _up(1024, 512, 2),  # 6
                _up(768, 384, 2),  # 12
                _up(512, 256, 2),  # 24
                _up(320, 128, 2),  # 48
                _up(160, 64, 2),  # 96
            ]
        )
        self.output_block = nn.Sequential(Conv(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """mels: B x 1 x 80 x 16; faces: B x 6 x 96 x 96 (masked face, reference face) in [0, 1]."""
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mels)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        out: torch.Tensor = self.output_block(x)
        return out


def load_wav2lip(path: Path, device: str = "cpu") -> Wav2Lip96:
    """The released checkpoint layout, strictly; a clear error for anything else."""
    if not path.is_file():
        raise EngineUnavailable(f"Wav2Lip checkpoint {path} not found (BABELROOM_LIPSYNC_MODEL)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EngineUnavailable(f"{path} is not a readable torch checkpoint: {exc}") from exc
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EngineUnavailable(f"{path}: expected Wav2Lip's {{'state_dict': {{'module.…': tensor}}}} layout")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = Wav2Lip96()
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise EngineUnavailable(
            f"{path} is not a Wav2Lip-96 checkpoint (wav2lip.pth or wav2lip_gan.pth); other variants are not "
            f"supported. missing: {missing[:3]}, unexpected: {unexpected[:3]}, other shapes: {wrong[:3]}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# --- audio -----------------------------------------------------------------------------------------------


def mel_spectrogram(samples: Samples, rate: int) -> npt.NDArray[np.float32]:
    """Wav2Lip's normalised log-mel spectrogram: 80 x frames, 80 frames per second, in [-4, 4]."""
    audio = resample(samples, rate, MEL_RATE).astype(np.float64)
    audio = lfilter([1, -PREEMPHASIS], [1], audio)
    padded = np.pad(audio, N_FFT // 2, mode="reflect") if audio.size > N_FFT // 2 else np.zeros(N_FFT)
    count = 1 + (padded.size - N_FFT) // HOP
    frames = padded[np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]] * get_window("hann", WIN)
    magnitude = np.abs(np.fft.rfft(frames, N_FFT, axis=1)).T
    db = 20 * np.log10(np.maximum(1e-5, mel_filters() @ magnitude)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    return np.clip(scaled, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_filters() -> npt.NDArray[np.float64]:
    """Slaney-style mel filters (librosa's default): triangles on the Slaney mel scale, area-normalised."""
    fft_hz = np.linspace(0, MEL_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    lower = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return np.asarray(weights * (2.0 / (edges[2:] - edges[:-2]))[:, None])


_MEL_LINEAR_HZ, _MEL_BREAK_HZ = 200.0 / 3, 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: Any) -> Any:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_LINEAR_HZ
    log = _MEL_BREAK_HZ / _MEL_LINEAR_HZ + np.log(np.maximum(hz, 1e-10) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, log, linear)


def _mel_to_hz(mel: Any) -> Any:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _MEL_LINEAR_HZ
    log = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - _MEL_BREAK_HZ / _MEL_LINEAR_HZ))
    return np.where(mel >= _MEL_BREAK_HZ / _MEL_LINEAR_HZ, log, linear)


def mel_windows(mel: npt.NDArray[np.float32], times_s: Sequence[float]) -> npt.NDArray[np.float32]:
    """The 16-frame mel window starting at each video frame's time (the last window past the end)."""
    padded = mel if mel.shape[1] >= MEL_STEP else np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), mode="edge")
    starts = np.minimum((np.asarray(times_s) * MEL_FRAMES_PER_S).astype(int), padded.shape[1] - MEL_STEP)
    return np.stack([padded[:, s : s + MEL_STEP] for s in starts])[:, None]


# --- the engine ------------------------------------------------------------------------------------------


class Wav2LipSyncer:
    name = "wav2lip"

    def __init__(self, options: LipSyncOptions) -> None:
        import_mediapipe()  # FaceMesh finds the face box
        self.options = options
        self.device = "cuda" if options.device == "auto" and torch.cuda.is_available() else options.device
        self.device = "cpu" if self.device == "auto" else self.device
        self.model = load_wav2lip(Path(options.model).expanduser(), self.device)
        self.half = self.device.startswith("cuda")
        if self.half:
            self.model = self.model.half()

    def sync(self, speech: SynthesizedSpeech, frames: Sequence[Frame], times_s: Sequence[float]) -> SyncedFrames:
        steps: dict[str, float] = {}
        started = time.perf_counter()
        samples = pcm16_to_float(speech.pcm)
        line = timeline(times_s, samples.size / speech.sample_rate, self.options.max_fps)
        used = sorted(set(line.source))
        boxes = dict(zip(used, face_boxes(smooth_landmarks(track_faces([frames[i] for i in used]))), strict=True))
        steps["landmarks"] = time.perf_counter() - started
        started = time.perf_counter()
        windows = mel_windows(mel_spectrogram(samples, speech.sample_rate), line.times_s)
        steps["mel"] = time.perf_counter() - started
        started = time.perf_counter()
        out = [frames[src] for src in line.source]  # frames without a face pass through untouched
        faced = [(k, box) for k, src in enumerate(line.source) if (box := boxes[src]) is not None]
        for start in range(0, len(faced), self.options.batch_size):
            batch = faced[start : start + self.options.batch_size]
            crops = np.stack([crop_face(out[k], box) for k, box in batch])
            faces = self._generate(crops, windows[[k for k, _ in batch]])
            for (k, box), face in zip(batch, faces, strict=True):
                out[k] = paste_face(out[k], face, box)
        steps["network"] = time.perf_counter() - started
        return SyncedFrames(out, line.times_s, line.fps, len(faced), steps)

    def _generate(self, crops: npt.NDArray[np.uint8], mels: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """96x96 RGB crops and their mel windows -> generated 96x96 RGB faces."""
        bgr = crops[..., ::-1].astype(np.float32) / 255
        masked = bgr.copy()
        masked[:, FACE_SIZE // 2 :] = 0  # the network redraws the lower half
        faces = torch.from_numpy(np.concatenate([masked, bgr], axis=3).transpose(0, 3, 1, 2).copy())
        audio = torch.from_numpy(np.ascontiguousarray(mels))
        dtype = torch.float16 if self.half else torch.float32
        with torch.inference_mode():
            result = self.model(audio.to(self.device, dtype), faces.to(self.device, dtype))
        generated = result.float().cpu().numpy().transpose(0, 2, 3, 1)[..., ::-1]
        return np.asarray(np.clip(generated * 255 + 0.5, 0, 255), np.uint8)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1


def face_boxes(landmarks: Sequence[Landmarks | None]) -> list[Box | None]:
    """The face's box in each frame (the landmarks' extent, a little lower at the chin)."""
    boxes: list[Box | None] = []
    for points in landmarks:
        if points is None:
            boxes.append(None)
            continue
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        y1 += FACE_PAD_BOTTOM * (y1 - y0)
        boxes.append((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
    return boxes


def crop_face(frame: Frame, box: Box) -> npt.NDArray[np.uint8]:
    import cv2

    x0, y0, x1, y1 = _clipped(box, frame.shape)
    return np.asarray(cv2.resize(frame[y0:y1, x0:x1], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA), np.uint8)


def paste_face(frame: Frame, face: npt.NDArray[np.uint8], box: Box) -> Frame:
    """The generated face back in its box, through a feathered mask over the mouth and jaw only."""
    import cv2

    x0, y0, x1, y1 = _clipped(box, frame.shape)
    width, height = x1 - x0, y1 - y0
    resized = cv2.resize(face, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    ellipse = np.zeros((height, width), np.float32)
    centre = (width // 2, int(height * 0.72))
    cv2.ellipse(ellipse, centre, (int(width * 0.3), int(height * 0.2)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(ellipse, (0, 0), max(1.0, MASK_FEATHER * width))[..., None]
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(mask * resized + (1 - mask) * region + 0.5, 0, 255).astype(np.uint8)
    return out


def _clipped(box: Box, shape: tuple[int, ...]) -> Box:
    x0, y0, x1, y1 = box
    return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
