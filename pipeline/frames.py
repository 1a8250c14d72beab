"""How a segment's video frames travel: JPEG-compressed within a size bound, in a VideoClip message.

The gateway keeps a speaker's recent frames (only with their consent). When it closes a segment that has
frames it stores them with `store_frames` under a key of (room, speaker, seq) with a TTL, and sets
`has_frames` on the segment; the speech synthesized for it then also goes to the lipsync stream
(pipeline.routes), whose worker reads the frames with `load_frames` and emits a lip-synced VideoClip per
language. Frames expire: a worker that falls behind finds nothing and the original frames play.

A clip's `frames` field holds the JPEGs back to back: a u32 count, then a u32 length and the bytes of
each. `make_clip` lowers the JPEG quality, then the resolution, until the whole clip fits `max_bytes`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis
import redis.asyncio as aioredis

from pipeline.messages import MessageError, Stamps, VideoClip, decode_as, encode

Frame = npt.NDArray[np.uint8]  # height x width x 3, RGB

# One segment's frames (10 s at 25 fps of 320x240 is about 2.5 MB at quality 80) must fit one Redis
# value and one stream entry, so a long or large clip is compressed harder or scaled down to fit.
FRAMES_MAX_BYTES = 2_000_000
JPEG_QUALITY = 80
# Below this quality JPEG blocks show around the mouth; past it, the clip is scaled down instead.
MIN_JPEG_QUALITY = 50
QUALITY_STEP = 10
SCALE_STEP = 0.8
MIN_SIDE = 64  # a clip that only fits smaller than this is refused
# Frames are worth keeping only until their segment's speech has played; then they expire.
FRAMES_TTL_S = 60
ESTIMATE_EVERY = 8  # encode every 8th frame to estimate a clip's size before encoding all of it

_U32 = struct.Struct(">I")


class FrameError(ValueError):
    """Frames that cannot be encoded or decoded (wrong shape, corrupt JPEG, over the size bound)."""


@dataclass(frozen=True)
class EncodedFrames:
    data: bytes  # pack_jpegs output
    width: int
    height: int
    quality: int


def pack_jpegs(jpegs: Sequence[bytes]) -> bytes:
    return b"".join([_U32.pack(len(jpegs)), *(_U32.pack(len(j)) + j for j in jpegs)])


def unpack_jpegs(data: bytes) -> list[bytes]:
    try:
        (count,) = _U32.unpack_from(data, 0)
        offset, jpegs = 4, []
        for _ in range(count):
            (size,) = _U32.unpack_from(data, offset)
            jpegs.append(data[offset + 4 : offset + 4 + size])
            if len(jpegs[-1]) != size:
                raise FrameError(f"frame {len(jpegs) - 1} is truncated")
            offset += 4 + size
    except struct.error as exc:
        raise FrameError(f"malformed frame data: {exc}") from exc
    if offset != len(data):
        raise FrameError(f"{len(data) - offset} stray bytes after {count} frames")
    return jpegs


def to_jpeg(frame: Frame, quality: int, size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(frame, "RGB")
    if size is not None and size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def from_jpeg(jpeg: bytes) -> Frame:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise FrameError(f"not a readable JPEG frame: {exc}") from exc


def encode_frames(
    frames: Sequence[Frame], max_bytes: int = FRAMES_MAX_BYTES, quality: int = JPEG_QUALITY
) -> EncodedFrames:
    """JPEG frames packed within `max_bytes`: lower quality first, then smaller frames."""
    if not frames:
        return EncodedFrames(pack_jpegs([]), 0, 0, quality)
    height, width = _common_shape(frames)
    size = (width, height)
    sample = frames[::ESTIMATE_EVERY]
    while True:
        estimate = sum(len(to_jpeg(f, quality, size)) + 4 for f in sample) * len(frames) / len(sample)
        if estimate <= max_bytes:
            data = pack_jpegs([to_jpeg(f, quality, size) for f in frames])
            if len(data) <= max_bytes:
                return EncodedFrames(data, size[0], size[1], quality)
        if quality - QUALITY_STEP >= MIN_JPEG_QUALITY:
            quality -= QUALITY_STEP
            continue
        size = (int(size[0] * SCALE_STEP) // 2 * 2, int(size[1] * SCALE_STEP) // 2 * 2)
        if min(size) < MIN_SIDE:
            raise FrameError(f"{len(frames)} frames do not fit {max_bytes} bytes even at {size[0]}x{size[1]}")


def _common_shape(frames: Sequence[Frame]) -> tuple[int, int]:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise FrameError(f"frames of one clip must share one size, got {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 2 or shape[1] < 2 or frames[0].dtype != np.uint8:
        raise FrameError(f"frames must be height x width x 3 uint8 RGB, got {shape} {frames[0].dtype}")
    return int(shape[0]), int(shape[1])


def make_clip(
    room: str,
    speaker: str,
    seq: int,
    frames: Sequence[Frame],
    timestamps_s: Sequence[float],
    *,
    language: str = "",
    engine: str = "",
    stamps: Stamps = (),
    max_bytes: int = FRAMES_MAX_BYTES,
) -> VideoClip:
    if len(frames) != len(timestamps_s):
        raise FrameError(f"{len(frames)} frames but {len(timestamps_s)} timestamps")
    encoded = encode_frames(frames, max_bytes)
    return VideoClip(
        room=room, speaker=speaker, seq=seq, stamps=stamps, language=language, width=encoded.width,
        height=encoded.height, frames=encoded.data, timestamps_s=tuple(float(t) for t in timestamps_s), engine=engine,
    )  # fmt: skip


def decode_frames(clip: VideoClip) -> list[Frame]:
    frames = [from_jpeg(j) for j in unpack_jpegs(clip.frames)]
    if len(frames) != len(clip.timestamps_s):
        raise FrameError(f"{len(frames)} frames but {len(clip.timestamps_s)} timestamps")
    return frames


def frames_key(prefix: str, room: str, speaker: str, seq: int) -> str:
    return f"{prefix}:frames:{room}:{speaker}:{seq}"


async def store_frames(client: aioredis.Redis, prefix: str, clip: VideoClip, ttl_s: int = FRAMES_TTL_S) -> None:
    """The gateway's side: one segment's frames (language empty), kept for `ttl_s`."""
    await client.set(frames_key(prefix, clip.room, clip.speaker, clip.seq), encode(clip), ex=ttl_s)


def load_frames(client: redis.Redis, prefix: str, room: str, speaker: str, seq: int) -> VideoClip | None:
    """The lipsync worker's side (blocking, off the event loop): None when absent or expired."""
    data = client.get(frames_key(prefix, room, speaker, seq))
    if data is None:
        return None
    if not isinstance(data, bytes):
        raise MessageError(f"frames of {room}/{speaker}/{seq} are not bytes")
    return decode_as(data, VideoClip)
