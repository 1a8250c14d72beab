"""`babelroom bench latency --out DIR`: how soon a listener reads and hears what a speaker says, through the
real gateway, a real Janus and the real asr, mt and tts workers, on a private Redis, inside a network
namespace of its own (Janus gathers no candidates on loopback; see babelroom/netns.py).

- `corpus`: at least 20 utterances, en->es spoken by the bundled Piper voice and es->en by espeak-ng, whose
  speech lasts 1-10 s;
- `ScriptedSpeaker`: an aiortc audio track (not a browser competing for the cores) that speaks them in real
  time, 20 ms frames at 48 kHz, with silence between, and notes the wall time at which each utterance's
  speech starts and ends leaving it;
- a ScriptedParticipant (benchmarks/participant.py) speaks them into a room per direction, while a second one
  listens in the target language: its captions (interim and final) and its translated feed's sound;
- `summarize` and `plot`: p50 and p95 of the first interim caption after speech onset, the final caption
  and the translated speech's start after the end of speech, each stage's share (from the stamps of
  the final messages), and the interim updates shown during the longest utterance, to latency.json and
  latency.png.

What the listener sees of an utterance is what arrives between its onset and the next one's: an utterance
cut in two (a long pause inside it) counts from its first interim caption to its last final caption, and
its speech start is the first translated clip that starts after its end (earlier parts' clips that played
while it was still spoken are counted in `translated_before_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from babelroom import netns
from pipeline.audio import Samples, float_to_pcm16, resample, rms_dbfs
from pipeline.messages import SAMPLE_RATE, Stamps, SynthesizedSpeech
from pipeline.stamps import stage_spans
from workers.engines.tts import EspeakSynthesizer, PiperSynthesizer

WIRE_RATE = 48_000  # what WebRTC audio runs at
FRAME_S = 0.02
FRAME_SAMPLES = round(WIRE_RATE * FRAME_S)
LEAD_S = 1.0  # silence before the first utterance: the gateway's segmenter learns the noise floor
GAP_S = 4.0  # silence after each utterance: its translation plays before the next one starts
RUN_LEAD_S = 4.0  # the benchmark's lead silence: the listener subscribes to the translated feed meanwhile
READY_S = 240.0  # the workers load their models (slower while other work shares the cores)
FEED_TIMEOUT_S = 30.0
TAIL_S = 15.0  # after the last utterance, how long to wait for its final caption
QUIET_S = 0.3  # a gap between loud frames of the translated feed this long starts a new clip
SPEECH_FLOOR_DBFS = -45.0  # 10 ms windows louder than this are speech (the voices' own silence is digital)
ESPEAK_WPM = 150
KEEP_RESULTS_S = 3_600  # the run's retention of `results`
# Issue 10's targets, seconds: (p50, p95) where the issue sets them.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "first_interim_after_onset_s": (1.2, None),
    "final_caption_after_end_s": (1.0, 1.8),
    "speech_start_after_end_s": (1.5, None),
}
TARGET_INTERIM_UPDATES = 3  # shown during an ~8 s utterance, before it ends

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


def corpus(en_es: Sequence[str] = EN_ES, es_en: Sequence[str] = ES_EN) -> list[Utterance]:
    piper, espeak = PiperSynthesizer(), EspeakSynthesizer(words_per_minute=ESPEAK_WPM)
    utterances = []
    for synth, language, target, texts in ((piper, "en", "es", en_es), (espeak, "es", "en", es_en)):
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
    room: str = ""
    final_seq: int | None = None  # the segment of the last final caption (its stamps are final_stamps)
    interim_updates: int = 0  # interim captions with text shown before the speech ended
    spoke_over: bool = False  # translated speech of an earlier part (a pause cut it) played before the end


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
        "translated_before_end": sum(h.spoke_over for h in heard),
        "longest_utterance": longest(heard),
    }


def longest(heard: Sequence[Heard]) -> dict[str, Any]:
    """The longest utterance: how many interim updates its listener read before it ended."""
    if not heard:
        return {}
    h = max(heard, key=lambda h: h.spoken.utterance.duration_s)
    utterance = h.spoken.utterance
    return {"text": utterance.text, "language": utterance.language, "duration_s": round(utterance.duration_s, 2),
            "interim_updates": h.interim_updates, "target": TARGET_INTERIM_UPDATES}  # fmt: skip


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
    title = f"{summary['utterances']} utterances (dashed: targets)"
    if longest := summary.get("longest_utterance"):
        title += f"\nlongest ({longest['duration_s']} s): {longest['interim_updates']} interim updates before its end"
    left.set_title(title)
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


def models_in_use(env: Mapping[str, str]) -> dict[str, str]:
    """The models the workers load from this environment, as RESULTS.md names them."""
    from benchmarks.provenance import cpu_whisper
    from workers.engines.asr import AsrOptions

    return {
        "asr": cpu_whisper(AsrOptions.from_env(env)),
        "mt": "Apertium",
        "tts": "Piper en_US-joe-medium (en), espeak-ng (es)",
    }


# -- the run: processes, two participants per direction, what the listener saw -------------------------------
def run(out_dir: Path, utterances: Sequence[Utterance] | None = None, gap_s: float = GAP_S) -> dict[str, Any]:
    """Speak `utterances` (default: the corpus) into the real service and write latency.json and latency.png."""
    from benchmarks.media import media_plane
    from benchmarks.provenance import provenance, save
    from pipeline.routes import SPEECH_KINDS

    if not netns.inside():
        netns.enter()
    chosen = list(utterances) if utterances is not None else corpus()
    directions = sorted({(u.language, u.target) for u in chosen})
    heard: list[Heard] = []
    workdir = out_dir / "latency-run"  # the services' log (services.log), Janus's configuration, Redis's files
    workdir.mkdir(parents=True, exist_ok=True)
    keep_results = {"BABELROOM_RETENTION_S": str(KEEP_RESULTS_S)}  # final_stamps reads them back at the end
    with media_plane(workdir, SPEECH_KINDS, keep_results) as (base_url, _, _, redis_url):
        wait_for_workers(base_url, SPEECH_KINDS)
        for language, target in directions:
            spoken = [u for u in chosen if (u.language, u.target) == (language, target)]
            heard += asyncio.run(converse(base_url, f"latency-{language}-{target}", spoken, gap_s))
        stamps = asyncio.run(final_stamps(redis_url))
    heard = [dataclasses.replace(h, final_stamps=stamps.get((h.room, h.final_seq), ())) for h in heard]
    result = {
        "benchmark": "latency",
        **provenance(models_in_use(os.environ)),
        "participants": "aiortc speaker and listener through Janus and the gateway",
        "targets": {name: {"p50": p50, "p95": p95} for name, (p50, p95) in TARGETS.items()},
        **summarize(heard),
        "per_utterance": [as_row(h) for h in heard],
    }
    save(result, out_dir, "latency", plot)
    print(json.dumps({k: v for k, v in result.items() if k != "per_utterance"}, indent=2), flush=True)
    return result


async def converse(base_url: str, room: str, utterances: Sequence[Utterance], gap_s: float) -> list[Heard]:
    """One speaker says `utterances` in their language while one listener hears the target language."""
    from benchmarks.participant import ScriptedParticipant

    language, target = utterances[0].language, utterances[0].target
    voice = ScriptedSpeaker(utterances, lead_s=RUN_LEAD_S, gap_s=gap_s)
    listener = ScriptedParticipant(base_url, room, "Listener", target, target)
    speaker = ScriptedParticipant(base_url, room, "Speaker", language, language)
    try:
        await listener.join(ScriptedSpeaker((), lead_s=voice.duration_s + RUN_LEAD_S).track())
        await speaker.join(voice.track())
        await listener.listen_to_translation(FEED_TIMEOUT_S)
        await asyncio.wait_for(voice.done.wait(), voice.duration_s + FEED_TIMEOUT_S)
        last_onset = voice.spoken[-1].onset_at or 0.0
        with contextlib.suppress(AssertionError):  # a final that never comes is counted as missed
            await listener.wait_for(lambda: final_since(listener, last_onset), "the last final caption", TAIL_S)
    finally:
        await speaker.close()
        await listener.close()
    seen = (listener.messages, listener.message_times, listener.translated_sound_at)
    return [what_was_heard(room, voice.spoken, i, *seen) for i in range(len(voice.spoken))]


def final_since(listener: Any, since: float) -> bool:
    return any(m["type"] == "caption" and m["final"] and t >= since
               for m, t in zip(listener.messages, listener.message_times, strict=True))  # fmt: skip


def sound_starts(sound_at: Sequence[float]) -> list[float]:
    """The times translated speech started: a loud frame after a quiet stretch (not the rest of a clip)."""
    return [t for i, t in enumerate(sound_at) if i == 0 or t - sound_at[i - 1] > QUIET_S]


def what_was_heard(
    room: str,
    spoken: Sequence[Spoken],
    index: int,
    messages: Sequence[dict[str, Any]],
    times: Sequence[float],
    sound_at: Sequence[float],
) -> Heard:
    """What reached the listener between utterance `index`'s onset and the next one's."""
    this = spoken[index]
    start = this.onset_at or 0.0
    until = spoken[index + 1].onset_at or float("inf") if index + 1 < len(spoken) else float("inf")
    target = this.utterance.target
    captions = [(t, m) for m, t in zip(messages, times, strict=True)
                if m["type"] == "caption" and m["lang"] == target and start <= t < until]  # fmt: skip
    interims = [t for t, m in captions if not m["final"] and m["text"]]
    finals = [(t, m) for t, m in captions if m["final"]]
    end = this.end_at or start
    starts = [t for t in sound_starts(sound_at) if start <= t < until]
    after_end = [t for t in starts if t >= end]
    return Heard(
        this,
        room=room,
        first_interim_at=interims[0] if interims else None,
        final_caption_at=finals[-1][0] if finals else None,
        speech_started_at=after_end[0] if after_end else None,
        spoke_over=len(after_end) < len(starts),
        final_seq=finals[-1][1]["seq"] if finals else None,
        interim_updates=sum(t < end for t in interims),
    )


async def final_stamps(redis_url: str) -> dict[tuple[str, int | None], Stamps]:
    """The stamps of every translated speech on `results`, by (room, seq): the final path's stages."""
    from pipeline.bus import Bus
    from pipeline.config import BusOptions

    bus = Bus.connect(BusOptions(redis_url=redis_url))
    stamps: dict[tuple[str, int | None], Stamps] = {}
    last_id: bytes | str = "0-0"
    try:
        while deliveries := await bus.tail("results", last_id, count=500):
            last_id = deliveries[-1].entry_id
            for message in (d.message for d in deliveries):
                if isinstance(message, SynthesizedSpeech):
                    stamps[(message.room, message.seq)] = message.stamps
    finally:
        await bus.close()
    return stamps


def wait_for_workers(base_url: str, kinds: Sequence[str], timeout_s: float = READY_S) -> None:
    """Until the gateway is connected to Janus and a worker of every kind is alive (models loaded)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    body: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as reply:
                body = json.loads(reply.read())
        except (OSError, ValueError):
            body = None
        if body and body.get("janus") == "connected" and all(body["workers"].get(k) for k in kinds):
            return
        time.sleep(0.5)
    raise SystemExit(f"the service at {base_url} was not ready within {timeout_s:.0f} s: {body}")


def as_row(h: Heard) -> dict[str, Any]:
    def after(at: float | None, mark: float | None) -> float | None:
        return round(at - mark, 3) if at is not None and mark is not None else None

    return {
        "text": h.spoken.utterance.text,
        "language": h.spoken.utterance.language,
        "duration_s": round(h.spoken.utterance.duration_s, 2),
        "first_interim_after_onset_s": after(h.first_interim_at, h.spoken.onset_at),
        "final_caption_after_end_s": after(h.final_caption_at, h.spoken.end_at),
        "speech_start_after_end_s": after(h.speech_started_at, h.spoken.end_at),
        "interim_updates": h.interim_updates,
    }
