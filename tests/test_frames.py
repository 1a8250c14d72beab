"""The frame codec and store: JPEG within a size bound, and the Redis hand-over from gateway to lipsync worker."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from pipeline.frames import (
    FRAMES_MAX_BYTES,
    Frame,
    FrameError,
    decode_frames,
    encode_frames,
    frames_key,
    load_frames,
    make_clip,
    pack_jpegs,
    store_frames,
    unpack_jpegs,
)
from pipeline.messages import VideoClip, encode


def moving_pattern(count: int, height: int = 240, width: int = 320) -> list[Frame]:
    """Textured frames (hard to compress, like camera noise) with a bright square moving across."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = base.copy()
        x = 10 + 4 * i % (width - 60)
        frame[100:140, x : x + 40] = 255
        frames.append(frame)
    return frames


def test_round_trip_keeps_frames_close() -> None:
    frames = moving_pattern(10)
    for f in frames:  # smooth frames: JPEG keeps them within a few levels
        f[:] = np.linspace(0, 200, 320, dtype=np.uint8)[None, :, None]
    clip = make_clip("r", "ana", 4, frames, [i / 25 for i in range(10)])
    back = decode_frames(clip)
    assert (clip.width, clip.height, len(back)) == (320, 240, 10)
    assert max(float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in zip(frames, back, strict=True)) < 2


def test_a_long_clip_is_compressed_then_scaled_to_fit_the_bound() -> None:
    frames = moving_pattern(250)  # 10 s at 25 fps of noise: ~80 KB per frame at quality 80
    encoded = encode_frames(frames)
    print(f"\n250 noisy frames: {len(encoded.data)} bytes at {encoded.width}x{encoded.height} q{encoded.quality}")
    assert len(encoded.data) <= FRAMES_MAX_BYTES
    assert (
        encoded.quality == 50 and encoded.width < 320 and encoded.width / encoded.height == pytest.approx(4 / 3, 0.05)
    )
    small = encode_frames(frames[:5])
    assert (small.width, small.height, small.quality) == (320, 240, 80)
    with pytest.raises(FrameError, match="do not fit"):
        encode_frames(frames, max_bytes=10_000)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(FrameError, match="share one size"):
        encode_frames([np.zeros((240, 320, 3), np.uint8), np.zeros((120, 160, 3), np.uint8)])
    with pytest.raises(FrameError, match="uint8 RGB"):
        encode_frames([np.zeros((240, 320), np.uint8)])
    with pytest.raises(FrameError, match="timestamps"):
        make_clip("r", "ana", 1, moving_pattern(2), [0.0])
    with pytest.raises(FrameError, match="truncated"):
        unpack_jpegs(pack_jpegs([b"abc", b"defg"])[:-1])
    with pytest.raises(FrameError, match="not a readable JPEG"):
        decode_frames(VideoClip(room="r", speaker="a", seq=1, frames=pack_jpegs([b"nope"]), timestamps_s=(0.0,)))


async def test_gateway_stores_and_worker_loads_through_real_redis(redis_url: str, stream_prefix: str) -> None:
    clip = make_clip("room 1", "ana", 7, moving_pattern(3), [0.0, 0.04, 0.08])
    writer = aioredis.Redis.from_url(redis_url)
    reader = redis.Redis.from_url(redis_url)
    try:
        await store_frames(writer, stream_prefix, clip, ttl_s=30)
        assert load_frames(reader, stream_prefix, "room 1", "ana", 7) == clip
        assert load_frames(reader, stream_prefix, "room 1", "ana", 8) is None  # another segment: nothing
        assert 0 < reader.ttl(frames_key(stream_prefix, "room 1", "ana", 7)) <= 30  # type: ignore[operator]
        reader.set(frames_key(stream_prefix, "room 1", "bob", 1), encode(clip)[:50])
        with pytest.raises(ValueError, match="malformed"):
            load_frames(reader, stream_prefix, "room 1", "bob", 1)
    finally:
        await writer.aclose()
        reader.close()
