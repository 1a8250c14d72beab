"""The latency benchmark's parts that do not need the gateway (prepared; `babelroom bench latency` wires them
to the real gateway once the media plane on Janus lands):

- `corpus`: at least 20 utterances, en->es spoken by the bundled Piper voice and es->en by espeak-ng, whose
  speech lasts 1-10 s;
- `ScriptedSpeaker`: an aiortc audio track (not a browser competing for the cores) that speaks them in real
  time, 20 ms frames at 48 kHz, with silence between, and notes the wall time at which each utterance's
  speech starts and ends leaving it;
- `summarize` and `plot`: p50 and p95 of the first interim caption after speech onset, the final caption
  and the translated speech's start after the end of speech, and each stage's share (from the stamps of
  the final messages), to latency.json and latency.png.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import Samples, float_to_pcm16, resample, rms_dbfs
from pipeline.messages import SAMPLE_RATE, Stamps
from pipeline.stamps import stage_spans
from workers.engines.tts import EspeakSynthesizer, PiperSynthesizer

WIRE_RATE = 48_000  # what WebRTC audio runs at
FRAME_S = 0.02
FRAME_SAMPLES = round(WIRE_RATE * FRAME_S)
LEAD_S = 1.0  # silence before the first utterance: the gateway's segmenter learns the noise floor
GAP_S = 4.0  # silence after each utterance: its translation plays before the next one starts
SPEECH_FLOOR_DBFS = -45.0  # 10 ms windows louder than this are speech (the voices' own silence is digital)
ESPEAK_WPM = 150
# Issue 10's targets, seconds: (p50, p95) where the issue sets them.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "first_interim_after_onset_s": (1.2, None),
    "final_caption_after_end_s": (1.0, 1.8),
    "speech_start_after_end_s": (1.5, None),
}

EN_ES = (
    "Yes, I agree.",
    "Thank you very much, everyone.",
    "Please send me the report after lunch.",
    "Can you share your screen with the whole team?",
    "The new version of the website will be ready next week.",
    "We need to find a better solution for our customers before the end of the year.",
    "I think we should talk about the budget first, and then we can look at the schedule.",
    "Before we start, I would like to thank the whole team for the hard work on the new release.",
    "Our customers asked for a lower price and a faster delivery, so we must decide what we can offer them.",
    "Good morning everyone.",
    "The meeting will start in five minutes.",
    "When we planned the new office, we wanted every team to sit near the people they work with most, "
    "and we wanted quiet rooms for calls.",
    "Last quarter we opened two new offices, hired twelve engineers and doubled our sales in the south, "
    "and this quarter we want to do the same in the north with half the budget.",
)
ES_EN = (
    "Sí, claro que sí.",
    "Muchas gracias a todos.",
    "Buenos días a todos y gracias por venir.",
    "La nueva versión de la página estará lista la próxima semana.",
    "Por favor, envíame el informe después de comer.",
    "Necesitamos encontrar una solución mejor para nuestros clientes.",
    "Creo que primero deberíamos hablar del presupuesto y después del calendario.",
    "El equipo trabaja en la oficina todos los lunes y los martes, y el resto de la semana desde casa.",
    "Nuestros clientes quieren un precio más bajo y una entrega más rápida, así que tenemos que decidir "
    "qué podemos ofrecer.",
    "Hasta mañana a todos.",
    "La reunión empieza en cinco minutos.",
    "Cuando planeamos la nueva oficina queríamos que cada equipo estuviera cerca de las personas con las "
    "que más trabaja.",
    "El trimestre pasado abrimos dos oficinas nuevas y duplicamos las ventas "
    "en el sur, y este trimestre queremos hacer lo mismo en el norte.",
)


@dataclass(frozen=True)
class Utterance:
    language: str
    target: str
    text: str
    samples: Samples  # 16 kHz mono, trimmed to the speech

    @property
    def duration_s(self) -> float:
        return self.samples.size / SAMPLE_RATE


def speech_only(samples: Samples, rate: int = SAMPLE_RATE) -> Samples:
    """The samples from the first to the last 10 ms window louder than SPEECH_FLOOR_DBFS."""
    hop = rate // 100
    loud = [i for i in range(0, samples.size - hop + 1, hop) if rms_dbfs(samples[i : i + hop]) > SPEECH_FLOOR_DBFS]
    return samples[loud[0] : loud[-1] + hop] if loud else samples[:0]


def corpus() -> list[Utterance]:
    piper, espeak = PiperSynthesizer(), EspeakSynthesizer(words_per_minute=ESPEAK_WPM)
    utterances = []
    for synth, language, target, texts in ((piper, "en", "es", EN_ES), (espeak, "es", "en", ES_EN)):
        for text in texts:
            audio = synth.synthesize(text, language)
            samples = speech_only(resample(audio.samples, audio.sample_rate, SAMPLE_RATE))
            utterances.append(Utterance(language, target, text, samples))
    return utterances


@dataclass
class Spoken:
    """When one utterance's speech left the speaker (time.time())."""

    utterance: Utterance
    onset_at: float | None = None
    end_at: float | None = None


class ScriptedSpeaker:
    """An aiortc audio track that speaks utterances in real time (create with `track()` inside a running loop
    where aiortc is installed). Frames are 48 kHz mono s16, 20 ms, paced by the wall clock."""

    def __init__(self, utterances: Sequence[Utterance], lead_s: float = LEAD_S, gap_s: float = GAP_S) -> None:
        lead = np.zeros(round(lead_s * WIRE_RATE), np.float32)
        parts, self.spans, position = [lead], [], lead.size
        for utterance in utterances:
            speech = resample(utterance.samples, SAMPLE_RATE, WIRE_RATE)
            self.spans.append((position, position + speech.size))
            parts += [speech, np.zeros(round(gap_s * WIRE_RATE), np.float32)]
            position += speech.size + parts[-1].size
        timeline = np.concatenate(parts)
        self.pcm = float_to_pcm16(np.pad(timeline, (0, -timeline.size % FRAME_SAMPLES)))
        self.frames = len(self.pcm) // (2 * FRAME_SAMPLES)
        self.spoken = [Spoken(u) for u in utterances]
        self.done = asyncio.Event()
        self._next = 0
        self._started_at = 0.0

    @property
    def duration_s(self) -> float:
        return self.frames * FRAME_S

    async def next_frame(self) -> tuple[bytes, int] | None:
        """The next frame's PCM and its first sample, at its due time; None once everything was spoken."""
        if self._next >= self.frames:
            self.done.set()
            return None
        if self._next == 0:
            self._started_at = time.time()
        due = self._started_at + self._next * FRAME_S
        await asyncio.sleep(max(0.0, due - time.time()))
        first = self._next * FRAME_SAMPLES
        self._next += 1
        self._note(first, time.time())
        return self.pcm[2 * first : 2 * (first + FRAME_SAMPLES)], first

    def _note(self, first: int, now: float) -> None:
        last = first + FRAME_SAMPLES
        for spoken, (start, end) in zip(self.spoken, self.spans, strict=True):
            if spoken.onset_at is None and first <= start < last:
                spoken.onset_at = now + (start - first) / WIRE_RATE
            if spoken.end_at is None and first < end <= last:
                spoken.end_at = now + (end - first) / WIRE_RATE

    def track(self) -> Any:
        """The aiortc MediaStreamTrack that sends these frames."""
        import av
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        speaker = self

        class Track(MediaStreamTrack):  # type: ignore[misc]
            kind = "audio"

            async def recv(self) -> av.AudioFrame:
                frame = await speaker.next_frame()
                if frame is None:
                    self.stop()
                    raise MediaStreamError
                pcm, first = frame
                out = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
                out.planes[0].update(pcm)
                out.sample_rate, out.pts, out.time_base = WIRE_RATE, first, fractions.Fraction(1, WIRE_RATE)
                return out

        return Track()


@dataclass
class Heard:
    """What the listener saw and heard of one utterance (time.time()), and the final messages' stamps."""

    spoken: Spoken
    first_interim_at: float | None = None
    final_caption_at: float | None = None
    speech_started_at: float | None = None
    final_stamps: Stamps = field(default_factory=tuple)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    return {"p50": round(float(np.percentile(values, 50)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "count": len(values)}  # fmt: skip


def summarize(heard: Sequence[Heard]) -> dict[str, Any]:
    """The benchmark's figures: latency percentiles in seconds and each stage's mean share of the final path."""
    onset = [h.first_interim_at - h.spoken.onset_at for h in heard if h.first_interim_at and h.spoken.onset_at]
    final = [h.final_caption_at - h.spoken.end_at for h in heard if h.final_caption_at and h.spoken.end_at]
    speech = [h.speech_started_at - h.spoken.end_at for h in heard if h.speech_started_at and h.spoken.end_at]
    spans: dict[str, list[float]] = {}
    for h in heard:
        for name, seconds in stage_spans(h.final_stamps):
            spans.setdefault(name, []).append(seconds)
    return {
        "utterances": len(heard),
        "first_interim_after_onset_s": percentiles(onset),
        "final_caption_after_end_s": percentiles(final),
        "speech_start_after_end_s": percentiles(speech),
        "stage_mean_s": {name: round(float(np.mean(v)), 4) for name, v in spans.items()},
        "missed_final_captions": sum(h.final_caption_at is None for h in heard),
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bars of p50 and p95 per measure, and the stages' mean shares stacked beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = tuple(TARGETS)
    labels = ("first interim\nafter onset", "final caption\nafter end", "speech start\nafter end")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(measures))
    for offset, key in ((-0.2, "p50"), (0.2, "p95")):
        values = [summary[m][key] or 0.0 for m in measures]
        left.bar(x + offset, values, width=0.4, label=key)
        targets = [TARGETS[m][key == "p95"] for m in measures]
        for i, target in enumerate(targets):
            if target is not None:
                left.hlines(target, i + offset - 0.2, i + offset + 0.2, colors="black", linestyles="dashed")
    left.set_xticks(x, labels)
    left.set_ylabel("seconds")
    left.set_title(f"{summary['utterances']} utterances (dashed: targets)")
    left.legend()
    bottom = 0.0
    for name, seconds in summary["stage_mean_s"].items():
        right.bar(0, seconds, bottom=bottom, label=name)
        bottom += seconds
    right.set_xticks([0], ["final path,\nmean per stage"])
    right.set_ylabel("seconds")
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
