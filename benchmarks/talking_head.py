"""A webcam-like talking-head video made from a real face photo that ships in a package
(scikit-image's `data.astronaut()`): the head sways, turns a little and moves toward and away from the
camera; the mouth stays as in the photo. The lip-sync tests, benchmarks and `translate` examples use it,
and its Y4M form feeds Chromium's fake camera (`--use-file-for-fake-video-capture=FILE.y4m`).

    python -m benchmarks.talking_head OUT.y4m [--seconds 6] [--fps 25] [--size 320x240]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.frames import Frame

FACE_CENTRE = (223.0, 138.0)  # between the eyes and the mouth, in the 512x512 photo
FACE_SPAN = 267.0  # photo pixels across the output frame: head and shoulders, like a webcam
# Head motion: a slow sway (pixels of the photo), a turn of the head (degrees) and a breathing-like zoom.
SWAY_PX = (9.0, 5.0)
SWAY_HZ = (0.23, 0.31)
TILT_DEG = 4.0
TILT_HZ = 0.17
ZOOM = 0.04
ZOOM_HZ = 0.11


def face_photo() -> Frame:
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit("the face photo comes from scikit-image: pip install 'babelroom[bench]'") from exc
    photo: Frame = np.ascontiguousarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]
    return photo


def talking_head_frames(seconds: float, fps: float = 25.0, size: tuple[int, int] = (320, 240)) -> list[Frame]:
    import cv2

    photo = face_photo()
    width, height = size
    frames: list[Frame] = []
    for k in range(round(seconds * fps)):
        t = k / fps
        centre = (
            FACE_CENTRE[0] + SWAY_PX[0] * np.sin(2 * np.pi * SWAY_HZ[0] * t),
            FACE_CENTRE[1] + SWAY_PX[1] * np.sin(2 * np.pi * SWAY_HZ[1] * t + 1.0),
        )
        scale = width / FACE_SPAN * (1 + ZOOM * np.sin(2 * np.pi * ZOOM_HZ * t))
        matrix = cv2.getRotationMatrix2D(centre, TILT_DEG * np.sin(2 * np.pi * TILT_HZ * t), scale)
        matrix[:, 2] += (width / 2 - centre[0], height * 0.45 - centre[1])  # the face a little above centre
        moved = cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame: Frame = np.ascontiguousarray(moved, dtype=np.uint8)
        frames.append(frame)
    return frames


def main() -> None:
    from pipeline.video import write_y4m

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("out", type=Path)
    args.add_argument("--seconds", type=float, default=6.0)
    args.add_argument("--fps", type=int, default=25)
    args.add_argument("--size", default="320x240", help="WIDTHxHEIGHT, even numbers")
    parsed = args.parse_args()
    width, height = (int(v) for v in parsed.size.lower().split("x"))
    write_y4m(parsed.out, talking_head_frames(parsed.seconds, parsed.fps, (width, height)), parsed.fps)
    print(parsed.out)


if __name__ == "__main__":
    main()
