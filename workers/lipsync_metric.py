"""Lip-sync measured without a learned judge: does the mouth open and close with the speech?

Mouth opening per frame is FaceMesh's inner-lip gap over the mouth width; loudness per frame is the
speech's RMS over that frame's time. Both are band-passed to 2-8 Hz (syllable rate: what is left is the
opening and closing, not the slow drift of a smile or a sentence), and their normalised
cross-correlation is taken at lags of a few frames either way. Synced video peaks high near lag 0; a
still or unrelated mouth does not. The tests, `babelroom translate` and the lip-sync benchmark use it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, sosfiltfilt

from pipeline.audio import Samples
from pipeline.frames import Frame
from pipeline.messages import Phoneme
from workers.engines.lipsync.face import mouth_opening, track_faces
from workers.engines.lipsync.visemes import viseme_of

FloatArray = npt.NDArray[np.float64]

BAND_HZ = (2.0, 8.0)
SEARCH_LAG_FRAMES = 6  # lags tried either way (a quarter of a second at 25 fps)
PASS_LAG_FRAMES = 2  # synced: the peak is within this many frames of lag 0 ...
PASS_CORRELATION = 0.5  # ... and at least this high
UNSYNCED_MAX = 0.2  # what the unprocessed video scores against the same speech, at most
# Lips that touch. On webcam-sized faces FaceMesh reads 0.04-0.07 for lips pressed together (one to two
# pixels at 320x240, where the mouth is about 30 pixels wide), and 0.17 for the photo's own parted smile.
CLOSED_OPENING = 0.08


@dataclass(frozen=True)
class SyncScore:
    corr: float  # the peak normalised cross-correlation
    lag_frames: int  # where it peaks; positive when the mouth moves after the sound

    @property
    def synced(self) -> bool:
        return self.corr >= PASS_CORRELATION and abs(self.lag_frames) <= PASS_LAG_FRAMES

    def as_dict(self) -> dict[str, float | int]:
        return {"corr": round(self.corr, 3), "lag_frames": self.lag_frames}


def mouth_openings(frames: Sequence[Frame]) -> FloatArray:
    """Per frame; frames without a face take their neighbours' value."""
    values = np.array([mouth_opening(lm) if lm is not None else np.nan for lm in track_faces(frames)])
    found = np.flatnonzero(~np.isnan(values))
    if found.size == 0:
        return np.zeros(len(frames))
    return np.asarray(np.interp(np.arange(values.size), found, values[found]), np.float64)


def loudness_per_frame(samples: Samples, rate: int, fps: float, count: int) -> FloatArray:
    """RMS of the speech during each frame's 1/fps seconds (0 past its end)."""
    edges = np.round(np.arange(count + 1) / fps * rate).astype(int)
    return np.array(
        [
            float(np.sqrt(np.mean(samples[a:b].astype(np.float64) ** 2))) if b > a and a < samples.size else 0.0
            for a, b in itertools.pairwise(edges)
        ]
    )


def band_pass(values: FloatArray, fps: float) -> FloatArray:
    high = min(BAND_HZ[1], 0.45 * fps)  # below Nyquist at low frame rates
    sos = butter(2, (BAND_HZ[0], high), btype="bandpass", fs=fps, output="sos")
    return np.asarray(sosfiltfilt(sos, values - values.mean(), padlen=min(values.size - 1, 3 * 5)))


def sync_score(openings: FloatArray, loudness: FloatArray, fps: float) -> SyncScore:
    mouth, sound = band_pass(openings, fps), band_pass(loudness, fps)
    best = SyncScore(-1.0, 0)
    for lag in range(-SEARCH_LAG_FRAMES, SEARCH_LAG_FRAMES + 1):
        a = mouth[max(lag, 0) : mouth.size + min(lag, 0)]
        b = sound[max(-lag, 0) : sound.size + min(-lag, 0)]
        if a.size > 2 and a.std() > 0 and b.std() > 0:
            corr = float(np.corrcoef(a, b)[0, 1])
            if corr > best.corr:
                best = SyncScore(corr, lag)
    return best


def measure_sync(frames: Sequence[Frame], fps: float, samples: Samples, rate: int) -> SyncScore:
    return sync_score(mouth_openings(frames), loudness_per_frame(samples, rate, fps, len(frames)), fps)


def bilabial_openings(openings: FloatArray, phonemes: Sequence[Phoneme], fps: float) -> list[float]:
    """The smallest opening during each p, b and m (the lips must meet at some frame of it)."""
    found = []
    for p in phonemes:
        if viseme_of(p.symbol).name != "PBM":
            continue
        first = int(np.floor(p.start_s * fps))
        last = max(first, int(np.ceil(p.end_s * fps)) - 1)
        window = openings[first : last + 1]
        if window.size:
            found.append(float(window.min()))
    return found
