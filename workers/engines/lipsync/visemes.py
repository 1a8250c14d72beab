"""From phonemes to mouth shapes over time, for the warp-based lip-sync engine.

Each IPA phoneme maps to one of a standard set of visemes (the mouth shapes that look alike: p/b/m,
f/v, open vowels, rounded vowels ...). A viseme is a target mouth: `open`, the inner-lip gap over the
mouth width (what FaceMesh measures between landmarks 13 and 14 over 61 and 291), and `width`, the
mouth width relative to the speaker's rest width (rounded < 1 < spread).

Coarticulation follows Cohen and Massaro's dominance model: each phoneme pulls the mouth toward its
target with a weight that peaks at its centre and decays with distance, so neighbours blend (the /h/
in "ha" already has the open mouth of the /a/). Bilabials dominate strongly and briefly: the lips
close for p, b and m whatever surrounds them. Loudness scales the opening a little (a shouted vowel
opens wider). Without phoneme timings (an engine that gives none) the opening follows loudness alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter1d

from pipeline.audio import Samples
from pipeline.messages import Phoneme

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Viseme:
    name: str
    open: float  # inner-lip gap / mouth width
    width: float  # mouth width / rest width
    dominance: float  # how strongly it holds against its neighbours
    reach_s: float  # how far (seconds) its influence extends past its own duration


REST = Viseme("rest", 0.00, 1.0, 0.6, 0.035)
VISEMES = {
    v.name: v
    for v in (
        REST,
        Viseme("PBM", 0.00, 0.98, 6.0, 0.01),  # lips pressed together
        Viseme("FV", 0.02, 1.0, 2.0, 0.02),  # lower lip against the upper teeth
        Viseme("TH", 0.06, 1.0, 1.0, 0.025),
        Viseme("DNT", 0.07, 1.02, 0.8, 0.025),  # t d n l s z: tongue behind the teeth, jaw nearly closed
        Viseme("KG", 0.10, 1.0, 0.4, 0.025),  # k g ng h: the mouth takes its neighbours' shape
        Viseme("CH", 0.08, 0.86, 1.5, 0.025),  # sh zh ch j: lips pushed forward
        Viseme("R", 0.08, 0.88, 1.0, 0.025),
        Viseme("WU", 0.08, 0.76, 1.6, 0.03),  # w, u: small and round
        Viseme("AA", 0.34, 1.0, 1.0, 0.03),  # a: wide open
        Viseme("E", 0.22, 1.06, 1.0, 0.03),
        Viseme("I", 0.11, 1.12, 1.0, 0.03),  # i: spread
        Viseme("O", 0.24, 0.82, 1.2, 0.03),  # o: open and round
        Viseme("ER", 0.14, 0.95, 1.0, 0.03),
    )
}

# The first IPA character decides (length marks and the second half of diphthongs follow it).
_IPA = {
    "PBM": "pbmɱ",
    "FV": "fvʋ",
    "TH": "θð",
    "DNT": "tdnlszɾɬɮʦʣ",
    "KG": "kgɡŋhxɣχʁqɢʔç",
    "CH": "ʃʒʂʐɕʑ",
    "R": "rɹʀɻ",
    "WU": "wuʊɥɯ",
    "AA": "aɑæɐʌɒä",
    "E": "eɛəɘœ",
    "I": "iɪjyʏɨ",
    "O": "oɔøɵ",
    "ER": "ɜɚɝ",
}
_BY_CHAR = {c: name for name, chars in _IPA.items() for c in chars}
_AFFRICATES = {"tʃ": "CH", "dʒ": "CH", "ts": "DNT", "dz": "DNT"}

# Loudness moves the opening by up to +-this fraction around the viseme's own.
LOUDNESS_SWING = 0.6
MAX_OPEN = 0.4  # wider looks like a shout
ENVELOPE_ONLY_OPEN = 0.38  # the opening of the loudest frame when there are no phonemes
ENVELOPE_FRAME_S = 0.02  # loudness is measured over 20 ms
SUBSAMPLES = 4  # per video frame: short phonemes are not missed between two frame times
PAUSE_S = 0.05  # a gap this long between phonemes is a pause: the mouth goes to rest


def viseme_of(symbol: str) -> Viseme:
    name = _AFFRICATES.get(symbol[:2]) or _BY_CHAR.get(symbol[:1])
    return VISEMES[name] if name else REST


@dataclass(frozen=True)
class MouthTrack:
    """Target mouth per video frame."""

    times_s: FloatArray
    open: FloatArray
    width: FloatArray
    closed: npt.NDArray[np.bool_]  # a bilabial is being said: the lips must touch


def mouth_track(phonemes: Sequence[Phoneme], samples: Samples, rate: int, fps: float, frames: int) -> MouthTrack:
    times = np.arange(frames) / fps
    shown = times + 0.5 / fps  # a frame is on screen for 1/fps: it shows the mouth of that interval's middle
    loudness = loudness_at(samples, rate, shown)
    if not phonemes:
        opening = ENVELOPE_ONLY_OPEN * loudness**0.7
        return MouthTrack(times, opening, np.ones(frames), np.zeros(frames, bool))
    fine = (shown[:, None] + (np.arange(SUBSAMPLES) - (SUBSAMPLES - 1) / 2) / (SUBSAMPLES * fps)).reshape(-1)
    opening, width = _blend(_with_rests(phonemes, samples.size / rate), fine)
    opening = opening.reshape(frames, SUBSAMPLES).mean(axis=1)
    width = width.reshape(frames, SUBSAMPLES).mean(axis=1)
    closed = _bilabial_at(phonemes, times, fps)
    opening = opening * (1 - LOUDNESS_SWING + 2 * LOUDNESS_SWING * loudness)
    opening[closed] = 0.0
    return MouthTrack(times, np.clip(opening, 0, MAX_OPEN), width, closed)


def _with_rests(phonemes: Sequence[Phoneme], end_s: float) -> list[tuple[Viseme, float, float]]:
    """The phonemes' visemes, with the rest shape in the pauses between them and around them."""
    spans: list[tuple[Viseme, float, float]] = []
    previous_end = 0.0
    for p in phonemes:
        if p.start_s - previous_end > PAUSE_S:
            spans.append((REST, previous_end, p.start_s))
        spans.append((viseme_of(p.symbol), p.start_s, p.end_s))
        previous_end = max(previous_end, p.end_s)
    spans.append((REST, previous_end, max(end_s, previous_end) + 0.2))
    return spans


def _blend(spans: Sequence[tuple[Viseme, float, float]], times: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Dominance-weighted average of the targets: full weight within a span, decaying past its edges."""
    weights = np.zeros((len(spans), times.size))
    for i, (viseme, start, end) in enumerate(spans):
        outside = np.maximum(start - times, 0) + np.maximum(times - end, 0)
        weights[i] = viseme.dominance * np.exp(-outside / viseme.reach_s)
    weights = np.maximum(weights, 1e-12)
    total = weights.sum(axis=0)
    opening = np.array([v.open for v, _, _ in spans]) @ weights / total
    width = np.array([v.width for v, _, _ in spans]) @ weights / total
    return opening, width


def _bilabial_at(phonemes: Sequence[Phoneme], times: FloatArray, fps: float) -> npt.NDArray[np.bool_]:
    """Frames nearest each bilabial's middle (at least one per p, b or m, however short)."""
    closed = np.zeros(times.size, bool)
    for p in phonemes:
        if viseme_of(p.symbol).name != "PBM":
            continue
        inside = (times + 0.5 / fps >= p.start_s) & (times + 0.5 / fps < p.end_s)  # shown mid-phoneme
        closed |= inside
        middle = int((p.start_s + p.end_s) / 2 * fps)
        if 0 <= middle < times.size:
            closed[middle] = True
    return closed


def loudness_at(samples: Samples, rate: int, times: FloatArray) -> FloatArray:
    """RMS loudness around each time, 0..1 of the clip's loud level (its 95th percentile)."""
    if samples.size == 0:
        return np.zeros(times.size)
    hop = max(1, int(ENVELOPE_FRAME_S * rate))
    n = max(1, samples.size // hop)
    rms = np.sqrt(np.mean(samples[: n * hop].astype(np.float64).reshape(n, hop) ** 2, axis=1))
    rms = gaussian_filter1d(rms, 1.0)
    level = np.interp(times, (np.arange(n) + 0.5) * hop / rate, rms, left=0.0, right=0.0)
    loud = float(np.percentile(rms, 95)) or 1.0
    return np.clip(level / loud, 0.0, 1.0)
