"""Lip-sync engines behind one protocol: `LipSyncer.sync(speech, frames, times_s) -> SyncedFrames`.

The speaker's frames of one segment come in on the segment's timeline; the synthesized speech (with
its phoneme timings) sets the output's: one frame every 1/fps seconds for as long as the speech lasts,
each taken from the source frame at the same relative position (the translation was fitted to the
segment's duration, so head motion keeps its pace), with the mouth re-made to say the translation.
A frame without a face passes through untouched.

- `cpu` (default): `mouthwarp.MouthWarpLipSyncer`, FaceMesh landmarks and a warp of the
  mouth and jaw driven by visemes; no learned weights.
- `wav2lip`: `wav2lip.Wav2LipSyncer`, the Wav2Lip-96 network on torch, from the user's
  own checkpoint (its released weights are licensed for non-commercial use only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.frames import Frame
from pipeline.messages import SynthesizedSpeech

CPU, WAV2LIP = "cpu", "wav2lip"
ENGINES = (CPU, WAV2LIP)
DEFAULT_ENGINE = CPU
DEFAULT_DEVICE = "auto"
# The output never has more frames per second than this (nor more than the source): cost grows with it.
MAX_FPS = 25.0
FALLBACK_FPS = 25.0  # the source's rate when a clip has a single frame
# Wav2Lip runs this many frames per forward pass (fp16 on CUDA).
WAV2LIP_BATCH_SIZE = 64
# Speech synthesized longer ago than this has been playing for a while: its clip would come too late, so
# a stage that fell behind skips it (lip-sync is the first thing to give way under load).
MAX_WAIT_S = 5.0


@dataclass(frozen=True)
class LipSyncOptions:
    engine: str = DEFAULT_ENGINE
    model: str = ""  # the Wav2Lip checkpoint (.pth); only for engine=wav2lip
    device: str = DEFAULT_DEVICE
    max_fps: float = MAX_FPS
    batch_size: int = WAV2LIP_BATCH_SIZE
    max_wait_s: float = MAX_WAIT_S

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown lip-sync engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.engine == WAV2LIP and not self.model:
            raise ValueError("the wav2lip engine needs its checkpoint: set BABELROOM_LIPSYNC_MODEL=/path/wav2lip.pth")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LipSyncOptions:
        return cls(
            engine=env.get("BABELROOM_LIPSYNC_ENGINE", DEFAULT_ENGINE),
            model=env.get("BABELROOM_LIPSYNC_MODEL", ""),
            device=env.get("BABELROOM_LIPSYNC_DEVICE", DEFAULT_DEVICE),
            max_fps=float(env.get("BABELROOM_LIPSYNC_MAX_FPS", MAX_FPS)),
            max_wait_s=float(env.get("BABELROOM_LIPSYNC_MAX_WAIT_S", MAX_WAIT_S)),
        )


@dataclass(frozen=True)
class SyncedFrames:
    frames: list[Frame]
    times_s: tuple[float, ...]  # from the start of the speech
    fps: float
    synced: int  # frames whose mouth was re-made; the others had no face and passed through
    steps_s: Mapping[str, float]  # time spent in each step, for benchmarks and logs


class LipSyncer(Protocol):
    """Blocking; the worker runtime calls it off the event loop."""

    name: str

    def sync(self, speech: SynthesizedSpeech, frames: Sequence[Frame], times_s: Sequence[float]) -> SyncedFrames: ...


@dataclass(frozen=True)
class Timeline:
    fps: float
    times_s: tuple[float, ...]  # output frame times, from the start of the speech
    source: tuple[int, ...]  # the source frame each output frame is made from


def timeline(source_times_s: Sequence[float], speech_s: float, max_fps: float = MAX_FPS) -> Timeline:
    """Output frames at min(source fps, max_fps) over the speech, each mapped to the source frame at the
    same relative position in the segment."""
    times = np.asarray(source_times_s, dtype=np.float64) - (source_times_s[0] if len(source_times_s) else 0.0)
    if times.size == 0 or speech_s <= 0:
        return Timeline(max_fps, (), ())
    source_fps = (times.size - 1) / times[-1] if times.size > 1 and times[-1] > 0 else FALLBACK_FPS
    fps = min(source_fps, max_fps)
    out = np.arange(max(1, int(np.ceil(speech_s * fps - 1e-9)))) / fps
    span = times[-1] + 1 / source_fps
    wanted = out * span / speech_s
    index = np.clip(np.searchsorted(times, wanted + 0.5 / source_fps) - 1, 0, times.size - 1)
    return Timeline(float(fps), tuple(float(t) for t in out), tuple(int(i) for i in index))
