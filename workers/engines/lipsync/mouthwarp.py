"""The CPU lip-sync engine: no learned weights, real time on a laptop.

For each output frame: FaceMesh landmarks of its source frame (smoothed over time, so the mouth does
not jitter and follows the head); the target mouth from the phonemes (workers.engines.lipsync.visemes); the lip
contours moved to it point by point in the mouth's own axes (the lower lip and jaw take most of an
opening, the upper lip the rest, the corners move in or out for rounded or spread vowels); one
thin-plate spline per lip, through its contours and still anchors around the mouth, joined along the
seam between the lips (one smooth warp cannot fold a parted smile shut); the mouth interior from the
speaker's own most open frame (upper teeth stay with the upper lip, lower teeth with the jaw, a shaded
cavity between) or, when they never show it, a cavity alone; a feathered mask blends the result in,
so there is no edge and nothing above the nose changes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.audio import pcm16_to_float
from pipeline.frames import Frame
from pipeline.messages import SynthesizedSpeech
from workers.engines.lipsync.base import LipSyncOptions, SyncedFrames, timeline
from workers.engines.lipsync.face import (
    JAW,
    LOWER_INNER,
    LOWER_OUTER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    STILL,
    UPPER_INNER,
    UPPER_OUTER,
    Landmarks,
    face_scale,
    import_mediapipe,
    mouth_opening,
    smooth_landmarks,
    track_faces,
)
from workers.engines.lipsync.visemes import MouthTrack, mouth_track

Points = npt.NDArray[np.float64]

UPPER_SHARE = 0.3  # of a change in opening, the upper lip takes this much; the lower lip and jaw the rest
# The outer lip contours move this much of what the inner ones do: lips thin out as the mouth opens and
# fill out as it closes, as real lips do.
OUTER_FOLLOW = 0.7
JAW_SHARE = 0.7  # the chin moves this much of the lower lip's displacement
# Closed lips keep their inner contours this far apart (of the mouth width): the dark line between them,
# and a warp that stays invertible.
MIN_GAP = 0.008
# Lips pressed together roll in: near closure the inner lip edge is drawn from this far into the lip
# (of its thickness), so the seam shows lip, not the teeth's dark border in the source.
LIP_ROLL = 0.35
ROLL_BELOW = 0.08  # openings under this roll the lips in, fully at 0
MIN_INTERIOR_OPEN = 0.08  # a frame this open shows enough teeth and cavity to fill other frames from
MASK_FEATHER = 0.18  # of the mouth width: the blend fades over this distance around the moved region
SEAM_PX = 1.0  # the upper and lower lips' warps meet over this many pixels
GRID_STEP = 4  # pixels between evaluations of the spline; bilinear in between
TPS_REGULARISATION = 1e-6  # keeps the spline's linear system well conditioned
CAVITY_RGB = (62, 24, 28)  # a mouth's dark interior, for speakers whose own is never seen
CAVITY_RAMP_PX = 1.5  # the teeth fade into the cavity over this many pixels
CAVITY_SHADE = 0.4  # the cavity darkens by this much toward the upper teeth, as a shadowed mouth does
TONGUE_RGB = np.array((150, 62, 66), np.float32)
# Teeth show once the lips are this far apart (pixels); nearly closed lips show only the dark line between.
TEETH_FROM_PX = (1.0, 3.5)
# Of an open mouth's teeth, the upper ones take this share of the gap (they stay with the upper lip),
# the lower ones the rest (they go with the jaw).
UPPER_TEETH_SHARE = 0.65
INNER_EDGE_SOFTNESS_PX = 0.6  # the inner lip edge is as soft as a camera renders it
CONTOUR_DENSITY = 3  # points per landmark interval along the lip contours: the warp holds the lips' shape


@dataclass(frozen=True)
class MouthAxes:
    """The mouth's own frame: origin between the corners, u along the mouth, v downward across it."""

    centre: Points
    ex: Points
    ey: Points
    width: float

    @classmethod
    def of(cls, landmarks: Landmarks) -> MouthAxes:
        left, right = landmarks[MOUTH_LEFT].astype(np.float64), landmarks[MOUTH_RIGHT].astype(np.float64)
        ex = (right - left) / max(float(np.linalg.norm(right - left)), 1e-6)
        return cls((left + right) / 2, ex, np.array([-ex[1], ex[0]]), float(np.linalg.norm(right - left)))

    def local(self, points: Points) -> Points:
        d = points - self.centre
        return np.stack([d @ self.ex, d @ self.ey], axis=-1)

    def image(self, local: Points) -> Points:
        return self.centre + local[..., :1] * self.ex + local[..., 1:] * self.ey


@dataclass(frozen=True)
class Teeth:
    """The speaker's most open frame, where teeth show: the inner-lip contours in its mouth axes."""

    frame: Frame
    axes: MouthAxes
    upper: Points
    lower: Points


@dataclass(frozen=True)
class Interior:
    """What an opened mouth shows: the speaker's own teeth when a frame of theirs shows them, and a cavity
    colour (their own darkest mouth pixels, or a default)."""

    cavity: npt.NDArray[np.float32]
    teeth: Teeth | None

    @classmethod
    def choose(cls, frames: Sequence[Frame], landmarks: Sequence[Landmarks | None]) -> Interior:
        openings = [mouth_opening(lm) if lm is not None else -1.0 for lm in landmarks]
        best = int(np.argmax(openings)) if openings else -1
        best_landmarks = landmarks[best] if best >= 0 else None
        if best_landmarks is None or openings[best] < MIN_INTERIOR_OPEN:
            return cls(np.array(CAVITY_RGB, np.float32), None)
        axes = MouthAxes.of(best_landmarks)
        points = best_landmarks.astype(np.float64)
        upper, lower = axes.local(points[list(UPPER_INNER)]), axes.local(points[list(LOWER_INNER)])
        cavity = _cavity_colour(frames[best], axes.image(np.vstack([upper, lower[::-1]])))
        return cls(cavity, Teeth(frames[best], axes, upper, lower))


def _cavity_colour(frame: Frame, polygon: Points) -> npt.NDArray[np.float32]:
    import cv2

    mask = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    inside = frame[mask > 0].astype(np.float32)
    if inside.shape[0] < 4:
        return np.array(CAVITY_RGB, np.float32)
    darkest = inside[np.argsort(inside.sum(axis=1))[: max(1, inside.shape[0] // 4)]]
    return np.asarray(np.minimum(darkest.mean(axis=0), np.array(CAVITY_RGB, np.float32) * 1.5), np.float32)


class MouthWarpLipSyncer:
    name = "mouthwarp"

    def __init__(self, options: LipSyncOptions | None = None) -> None:
        import_mediapipe()  # fail at load, not on the first segment (mediapipe brings OpenCV)
        self.options = options or LipSyncOptions()

    def sync(self, speech: SynthesizedSpeech, frames: Sequence[Frame], times_s: Sequence[float]) -> SyncedFrames:
        from threadpoolctl import threadpool_limits

        # Small solves per frame: BLAS threads only contend (10-100x slower on a busy 2-core machine).
        with threadpool_limits(1, user_api="blas"):
            return self._sync(speech, frames, times_s)

    def _sync(self, speech: SynthesizedSpeech, frames: Sequence[Frame], times_s: Sequence[float]) -> SyncedFrames:
        steps: dict[str, float] = {}
        started = time.perf_counter()
        samples = pcm16_to_float(speech.pcm)
        line = timeline(times_s, samples.size / speech.sample_rate, self.options.max_fps)
        used = sorted(set(line.source))
        tracked = smooth_landmarks(track_faces([frames[i] for i in used]))
        landmarks = dict(zip(used, tracked, strict=True))
        steps["landmarks"] = time.perf_counter() - started
        started = time.perf_counter()
        track = mouth_track(speech.phonemes, samples, speech.sample_rate, line.fps, len(line.times_s))
        faces = [lm for lm in tracked if lm is not None]
        rest = float(np.median([MouthAxes.of(lm).width / face_scale(lm) for lm in faces])) if faces else 0.0
        interior = Interior.choose([frames[i] for i in used], tracked)
        steps["visemes"] = time.perf_counter() - started
        started = time.perf_counter()
        out = [self._frame(frames[src], landmarks[src], track, k, rest, interior) for k, src in enumerate(line.source)]
        steps["warp"] = time.perf_counter() - started
        synced = sum(landmarks[src] is not None for src in line.source)
        return SyncedFrames(out, line.times_s, line.fps, synced, steps)

    @staticmethod
    def _frame(
        frame: Frame, landmarks: Landmarks | None, track: MouthTrack, k: int, rest: float, interior: Interior
    ) -> Frame:
        if landmarks is None:
            return frame  # no face: the frame passes through untouched
        width = float(track.width[k]) * rest * face_scale(landmarks)
        return warp_mouth(frame, landmarks, float(track.open[k]), width, interior)


@dataclass(frozen=True)
class Lips:
    """The lip contours, corner to corner and index-aligned (each densified along a spline through its
    landmarks), and the jaw points: what the warp moves."""

    upper_outer: Points
    upper_inner: Points
    lower_inner: Points
    lower_outer: Points
    jaw: Points

    @classmethod
    def of(cls, points: Points) -> Lips:
        upper_outer, upper_inner, lower_inner, lower_outer = (
            _dense(points[list(c)]) for c in (UPPER_OUTER, UPPER_INNER, LOWER_INNER, LOWER_OUTER)
        )
        return cls(upper_outer, upper_inner, lower_inner, lower_outer, points[list(JAW)])

    def all(self) -> Points:
        return np.vstack([self.upper(), self.lower()])

    def upper(self) -> Points:
        return np.vstack([self.upper_outer, self.upper_inner])

    def lower(self) -> Points:
        return np.vstack([self.lower_inner, self.lower_outer, self.jaw])

    def inner_polygon(self) -> Points:
        return np.vstack([self.upper_inner, self.lower_inner[::-1]])


def _dense(contour: Points) -> Points:
    return _spline_basis(len(contour)) @ contour


@functools.cache
def _spline_basis(knots: int) -> Points:
    """The natural cubic spline through `knots` points, sampled CONTOUR_DENSITY times per interval, as a
    matrix: one product per contour instead of a spline fit per frame."""
    from scipy.interpolate import CubicSpline

    at = np.linspace(0, knots - 1, (knots - 1) * CONTOUR_DENSITY + 1)
    return np.asarray(CubicSpline(np.arange(knots), np.eye(knots), bc_type="natural")(at))


def target_lips(landmarks: Landmarks, axes: MouthAxes, opening: float, width: float) -> Lips:
    """Where the lips go for a mouth of this opening (inner gap / width) and width (pixels).

    The inner-lip gap is set point by point along the mouth to an elliptical profile (so a wide smile's
    gap closes at the sides as well as in the middle); the upper lip takes UPPER_SHARE of each change,
    the lower lip the rest, the outer contours OUTER_FOLLOW of their inner neighbour's, the jaw follows
    the lower lip's middle."""
    lips = Lips.of(axes.local(landmarks.astype(np.float64)))
    u = (lips.upper_inner[:, 0] + lips.lower_inner[:, 0]) / 2
    along = 2 * (u - u[0]) / max(u[-1] - u[0], 1e-6) - 1  # -1 at one corner, 1 at the other
    wanted = max(opening, MIN_GAP) * width * np.sqrt(np.clip(1 - along**2, 0, 1))
    change = wanted - np.maximum(lips.lower_inner[:, 1] - lips.upper_inner[:, 1], 0)
    change[[0, -1]] = 0  # the corners stay on the mouth line
    stretch = np.array([width / axes.width, 1.0])

    def moved(contour: Points, share: float) -> Points:
        return axes.image(contour * stretch + np.stack([np.zeros_like(change), share * change], axis=1))

    reach = np.clip(1 - (lips.jaw[:, 0] / (0.9 * axes.width)) ** 2, 0, 1)
    jaw_drop = JAW_SHARE * (1 - UPPER_SHARE) * OUTER_FOLLOW * change[len(change) // 2] * reach
    return Lips(
        moved(lips.upper_outer, -UPPER_SHARE * OUTER_FOLLOW),
        moved(lips.upper_inner, -UPPER_SHARE),
        moved(lips.lower_inner, 1 - UPPER_SHARE),
        moved(lips.lower_outer, (1 - UPPER_SHARE) * OUTER_FOLLOW),
        axes.image(lips.jaw + np.stack([np.zeros_like(jaw_drop), jaw_drop], axis=1)),
    )


def source_lips(landmarks: Landmarks, opening: float) -> Lips:
    """The lips as the warp samples them: the inner edges moved into the lips as they close."""
    lips = Lips.of(landmarks.astype(np.float64))
    roll = LIP_ROLL * float(np.clip(1 - opening / ROLL_BELOW, 0, 1))
    upper = lips.upper_inner + roll * (lips.upper_outer - lips.upper_inner)
    lower = lips.lower_inner + roll * (lips.lower_outer - lips.lower_inner)
    return Lips(lips.upper_outer, upper, lower, lips.lower_outer, lips.jaw)


def warp_mouth(frame: Frame, landmarks: Landmarks, opening: float, width: float, interior: Interior) -> Frame:
    import cv2

    axes = MouthAxes.of(landmarks)
    source, target = source_lips(landmarks, opening), target_lips(landmarks, axes, opening, width)
    moving = np.vstack([source.all(), target.all()])
    feather = MASK_FEATHER * axes.width
    x0, y0, x1, y1 = _region(moving, 3 * feather, frame.shape[:2])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return frame
    origin = np.array([x0, y0], np.float64)
    size = (x1 - x0, y1 - y0)
    pinned = np.vstack([landmarks[list(STILL)].astype(np.float64) - origin, _ring(*size)])
    # Two warps, one for each lip, joined along the seam between them: a single smooth warp cannot fold
    # a smile's open mouth shut.
    upper = tps_map(np.vstack([target.upper() - origin, pinned]), np.vstack([source.upper() - origin, pinned]), size)
    lower = tps_map(np.vstack([target.lower() - origin, pinned]), np.vstack([source.lower() - origin, pinned]), size)
    below = _below_seam(target, axes, origin, size)[..., None]
    mapping = (1 - below) * upper + below * lower + origin.astype(np.float32)
    warped = cv2.remap(frame, mapping[..., 0], mapping[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped = _paint_interior(warped.astype(np.float32), target, axes, width, interior, origin)
    hull = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(moving - origin).astype(np.int32)), 1.0)
    mask = np.clip(2 * cv2.GaussianBlur(hull, (0, 0), feather), 0, 1)
    mask = np.where(mask < 1 / 255, 0, mask)[..., None]  # the blur's far tail: leave those pixels exactly as they are
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(mask * warped + (1 - mask) * region + 0.5, 0, 255).astype(np.uint8)
    return out


def _below_seam(lips: Lips, axes: MouthAxes, origin: Points, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Per pixel, how much it belongs to the lower lip's warp: 0 above the line midway between the inner
    lips, 1 below it; beyond the corners the change spreads out, where the two warps agree anyway."""
    width, height = size
    xs, ys = np.meshgrid(np.arange(width) + origin[0], np.arange(height) + origin[1])
    local = axes.local(np.stack([xs, ys], -1).reshape(-1, 2))
    seam = axes.local((lips.upper_inner + lips.lower_inner) / 2)
    seam_v = np.interp(local[:, 0], *_sorted(seam))
    beyond = np.maximum(np.abs(local[:, 0]) - np.abs(seam[:, 0]).max(), 0)
    weight = np.clip((local[:, 1] - seam_v) / (SEAM_PX + beyond) + 0.5, 0, 1)
    return np.asarray(weight.reshape(height, width), np.float32)


def _region(points: Points, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = points.min(axis=0) - margin, points.max(axis=0) + margin
    height, width = shape
    return max(0, int(x0)), max(0, int(y0)), min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))


def _ring(width: int, height: int, per_side: int = 4) -> Points:
    """Still points along the region's border: the warp is zero there."""
    t = np.linspace(0, 1, per_side, endpoint=False)
    w, h = width - 1, height - 1
    sides = [np.stack([t * w, 0 * t], 1), np.stack([w + 0 * t, t * h], 1)]
    sides += [np.stack([w - t * w, h + 0 * t], 1), np.stack([0 * t, h - t * h], 1)]
    return np.vstack(sides).astype(np.float64)


def tps_map(target: Points, source: Points, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """For each pixel of a width x height region, where to sample the source: the thin-plate spline that
    takes `target` points to `source` points, evaluated every GRID_STEP pixels and bilinear between."""
    import cv2

    width, height = size
    scale = float(max(width, height))
    t, s = target / scale, source / scale
    n = len(t)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _kernel(t, t) + TPS_REGULARISATION * np.eye(n)
    system[:n, n] = system[n, :n] = 1
    system[:n, n + 1 :] = t
    system[n + 1 :, :n] = t.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = s
    params = np.linalg.solve(system, rhs)
    # Grid points sit where cv2.resize's half-pixel convention puts its samples, so the upsampling aligns.
    cols, rows = -(-width // GRID_STEP), -(-height // GRID_STEP)
    gx = (np.arange(cols) + 0.5) * GRID_STEP - 0.5
    gy = (np.arange(rows) + 0.5) * GRID_STEP - 0.5
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2) / scale
    values = _kernel(grid, t) @ params[:n] + params[n] + grid @ params[n + 1 :]
    coarse = (values * scale).reshape(rows, cols, 2).astype(np.float32)
    fine = cv2.resize(coarse, (cols * GRID_STEP, rows * GRID_STEP), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(fine[:height, :width])


def _kernel(a: Points, b: Points) -> Points:
    """r^2 log r between every point of `a` and every point of `b`."""
    r2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 1e-20)
    return np.asarray(0.5 * r2 * np.log(r2))


def _paint_interior(
    region: npt.NDArray[np.float32], target: Lips, axes: MouthAxes, width: float, interior: Interior, origin: Points
) -> npt.NDArray[np.float32]:
    """Paint the inside of the target inner-lip contour: teeth attached to each lip, cavity between."""
    import cv2

    polygon = target.inner_polygon() - origin
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, region.shape[1]), min(y1, region.shape[0])
    if x1 - x0 < 2 or y1 - y0 < 1:
        return region
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(alpha, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    xs, ys = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))
    local = axes.local(np.stack([xs, ys], -1).reshape(-1, 2) + origin)
    v_top = np.interp(local[:, 0], *_sorted(axes.local(target.upper_inner)))
    v_bottom = np.interp(local[:, 0], *_sorted(axes.local(target.lower_inner)))
    from_top, from_bottom = local[:, 1] - v_top, v_bottom - local[:, 1]
    down = np.clip(from_top / np.maximum(from_top + from_bottom, 1e-6), 0, 1)[:, None]  # 0 top .. 1 bottom
    # Shadow under the upper teeth, the tongue's lighter red toward the bottom.
    colour = (interior.cavity * (1 - CAVITY_SHADE * (1 - down)) * (1 - down) + TONGUE_RGB * down**2).astype(np.float32)
    if interior.teeth is not None:
        teeth = _teeth(interior.teeth, local[:, 0], from_top, from_bottom, width, colour)
        gap = np.maximum(from_top + from_bottom, 0)[:, None]
        shown = np.clip((gap - TEETH_FROM_PX[0]) / (TEETH_FROM_PX[1] - TEETH_FROM_PX[0]), 0, 1)
        colour = np.asarray(shown * teeth + (1 - shown) * colour, np.float32)
    patch = colour.reshape(y1 - y0, x1 - x0, 3)
    a = cv2.GaussianBlur(alpha.astype(np.float32) / 255, (0, 0), INNER_EDGE_SOFTNESS_PX)[..., None]
    region[y0:y1, x0:x1] = a * patch + (1 - a) * region[y0:y1, x0:x1]
    return region


def _teeth(
    teeth: Teeth, u: Points, from_top: Points, from_bottom: Points, width: float, cavity: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The speaker's teeth at each point of the target's mouth (u along it, distances from its two inner
    lips): the upper teeth hang from the upper lip, the lower ones rest on the lower lip, cavity between."""
    import cv2

    scale = teeth.axes.width / width
    u = u * scale
    top, bottom = np.interp(u, *_sorted(teeth.upper)), np.interp(u, *_sorted(teeth.lower))
    gap = np.maximum(bottom - top, 0)
    down, up = from_top * scale, from_bottom * scale
    upper_side = down <= UPPER_TEETH_SHARE * (down + up)
    v = np.where(upper_side, top + down, bottom - up)
    beyond = np.where(upper_side, down - UPPER_TEETH_SHARE * gap, up - (1 - UPPER_TEETH_SHARE) * gap)
    points = teeth.axes.image(np.stack([u, v], -1)).astype(np.float32)
    sampled = cv2.remap(teeth.frame, points[:, :1], points[:, 1:], cv2.INTER_LINEAR).reshape(-1, 3)
    open_part = np.clip(beyond / CAVITY_RAMP_PX, 0, 1)[:, None]  # 0 where the teeth reach
    return np.asarray((1 - open_part) * sampled + open_part * cavity, np.float32)


def _sorted(contour: Points) -> tuple[Points, Points]:
    order = np.argsort(contour[:, 0])
    return contour[order, 0], contour[order, 1]
