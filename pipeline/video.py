"""Video files through PyAV (FFmpeg's libraries, bundled in its wheels): read a recording's frames and
speech, write a dubbed MP4 (H.264 + AAC) and a Y4M (raw I420, what Chromium's fake camera plays)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import Samples, resample
from pipeline.frames import Frame
from pipeline.messages import SAMPLE_RATE

VIDEO_SUFFIXES = (".mp4", ".webm", ".y4m", ".mkv", ".mov")
MP4_CRF = 20  # H.264 quality: visually clean at webcam sizes
AUDIO_BITRATE = 128_000
AAC_RATE = 48_000


class VideoError(ValueError):
    """A file that is not a readable video."""


@dataclass(frozen=True)
class Video:
    frames: list[Frame]  # RGB
    times_s: tuple[float, ...]  # each frame's presentation time from the first frame
    fps: float
    audio: Samples  # mono 16 kHz float32; empty when the file has no audio track

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps if self.fps else 0.0


def import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise VideoError("video files need PyAV: pip install 'babelroom[lipsync]'") from exc
    return av


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video(path: Path) -> Video:
    av = import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video track")
            frames, times = _read_frames(container)
        with av.open(str(path)) as container:
            audio = _read_audio(container) if container.streams.audio else np.zeros(0, np.float32)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot read {path}: {exc}") from exc
    if not frames:
        raise VideoError(f"{path} has no video frames")
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 25.0
    return Video(frames, tuple(t - times[0] for t in times), float(fps), audio)


def _read_frames(container: Any) -> tuple[list[Frame], list[float]]:
    stream = container.streams.video[0]
    frames, times = [], []
    for index, frame in enumerate(container.decode(stream)):
        frames.append(frame.to_ndarray(format="rgb24"))
        rate = stream.average_rate or stream.guessed_rate or 25
        times.append(float(frame.time) if frame.time is not None else index / float(rate))
    return frames, times


def _read_audio(container: Any) -> Samples:
    av = import_av()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks = [
        out.to_ndarray().reshape(-1)
        for frame in container.decode(container.streams.audio[0])
        for out in resampler.resample(frame)
    ]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def write_mp4(path: Path, frames: Sequence[Frame], fps: float, audio: Samples, rate: int = SAMPLE_RATE) -> None:
    """H.264 video (yuv420p, so every player shows it) with the audio as AAC."""
    av = import_av()
    if not frames:
        raise VideoError("no frames to write")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height, video.pix_fmt = width // 2 * 2, height // 2 * 2, "yuv420p"
        video.options = {"crf": str(MP4_CRF), "preset": "veryfast"}
        sound = container.add_stream("aac", rate=AAC_RATE, layout="mono")
        sound.bit_rate = AUDIO_BITRATE
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: video.height, : video.width]), "rgb24")
            container.mux(video.encode(image))
        container.mux(video.encode(None))
        _mux_audio(container, sound, resample(audio, rate, AAC_RATE))


def _mux_audio(container: Any, stream: Any, samples: Samples) -> None:
    av = import_av()
    block = 1024  # AAC frame size
    for start in range(0, samples.size, block):
        chunk = np.zeros((1, block), np.float32)
        piece = samples[start : start + block]
        chunk[0, : piece.size] = piece
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = AAC_RATE, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_y4m(path: Path, frames: Sequence[Frame], fps: int) -> None:
    """YUV4MPEG2, 4:2:0: Chromium's fake camera loops it (`--use-file-for-fake-video-capture`)."""
    av = import_av()
    if not frames:
        raise VideoError("no frames to write")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise VideoError(f"Y4M 4:2:0 needs an even frame size, got {width}x{height}")
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")))
        container.mux(stream.encode(None))
