"""`babelroom bench latency --out DIR`: how soon a listener reads and hears what a speaker says, through the
real gateway, a real Janus and the real asr, mt and tts workers, on a private Redis, inside a network
namespace of its own (Janus gathers no candidates on loopback; see babelroom/netns.py).

- `corpus`: at least 20 utterances, en->es spoken by the bundled Piper voice and es->en by espeak-ng, whose
  speech lasts 1-10 s;
- `ScriptedSpeaker`: an aiortc audio track (not a browser competing for the cores) that speaks them in real
  time, 20 ms frames at 48 kHz, with silence between, and notes the wall time at which each utterance's
  speech starts and ends leaving it;
- a ScriptedParticipant (benchmarks/participant.py) speaks them into a room per direction, while others
  listen: its captions (interim and final) and its translated feed's sound. Each direction runs in rooms
  with 1, 2 and 3 listening languages (`LISTENERS`): every target language costs the interim path an MT pass;
- `summarize` and `plot`: p50 and p95 of the first interim caption after speech onset, the final caption
  and the translated speech's start after the end of speech, each stage's share (from the stamps of
  the final messages), and the interim updates shown during the longest utterance, to latency.json and
  latency.png; the figures of the rooms with one listening language at the top, every room's first interim
  (by number of target languages, each listener's language, and where its time went) under `by_targets`.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from babelroom import netns
from pipeline.audio import Samples, float_to_pcm16, resample, rms_dbfs
from pipeline.messages import SAMPLE_RATE, InterimTranscript, InterimTranslation, Stamps, SynthesizedSpeech
from pipeline.stamps import stage_spans
from workers.engines.tts.espeak import EspeakSynthesizer
from workers.engines.tts.piper import PiperSynthesizer

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
# Issue 21: interim captions reach every listening language as fast as they reach one.
TARGET_FIRST_INTERIM_P95_S = 1.2
# The listening languages of the rooms each speaker language is heard in: the room with k target languages
# has the first k. en->es, en->ca and es->pt are Apertium pairs; en->pt goes through es, es->ca through en (each
# has an espeak-ng voice).
LISTENERS: dict[str, tuple[str, ...]] = {"en": ("es", "ca", "pt"), "es": ("en", "ca", "pt")}
TARGET_COUNTS = (1, 2, 3)

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


InterimKey = tuple[str, int, int, str]  # room, seq, revision, language


@dataclass
class Heard:
    """What one listener saw and heard of one utterance (time.time()), and the final messages' stamps."""

    spoken: Spoken
    _: KW_ONLY  # the rest by name: a field added in the middle must not shift a caller's positions
    language: str = ""  # the listener's
    targets: int = 1  # how many languages the room listened in
    first_interim_at: float | None = None
    first_interim: InterimKey | None = None  # the first interim caption shown (its segment and revision)
    interim_stamps: Stamps = field(default_factory=tuple)  # that caption's message's stamps
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


def first_interim_delays(heard: Sequence[Heard]) -> list[float]:
    return [h.first_interim_at - h.spoken.onset_at for h in heard if h.first_interim_at and h.spoken.onset_at]


def summarize(heard: Sequence[Heard]) -> dict[str, Any]:
    """The benchmark's figures: latency percentiles in seconds and each stage's mean share of the final path."""
    onset = first_interim_delays(heard)
    final = [h.final_caption_at - h.spoken.end_at for h in heard if h.final_caption_at and h.spoken.end_at]
    speech = [h.speech_started_at - h.spoken.end_at for h in heard if h.speech_started_at and h.spoken.end_at]
    return {
        "utterances": len(heard),
        "first_interim_after_onset_s": percentiles(onset),
        "final_caption_after_end_s": percentiles(final),
        "speech_start_after_end_s": percentiles(speech),
        "stage_mean_s": mean_spans([stage_spans(h.final_stamps) for h in heard]),
        "missed_final_captions": sum(h.final_caption_at is None for h in heard),
        "translated_before_end": sum(h.spoke_over for h in heard),
        "longest_utterance": longest(heard),
    }


def by_targets(heard: Sequence[Heard]) -> dict[str, Any]:
    """For the rooms with each number of target languages: the first interim caption after speech onset at
    every listener (all together and per language), the final caption, and where the first interims' time
    went (the mean of each hop)."""
    figures = {}
    for count in sorted({h.targets for h in heard}):
        rooms = [h for h in heard if h.targets == count]
        languages = sorted({h.language for h in rooms})
        final = [h.final_caption_at - h.spoken.end_at for h in rooms if h.final_caption_at and h.spoken.end_at]
        figures[str(count)] = {
            "languages": languages,
            "first_interim_after_onset_s": percentiles(first_interim_delays(rooms)),
            "first_interim_by_language_s": {
                language: percentiles(first_interim_delays([h for h in rooms if h.language == language]))
                for language in languages
            },
            "missed_interims": sum(h.first_interim_at is None for h in rooms),
            "final_caption_after_end_s": percentiles(final),
            "first_interim_hop_mean_s": mean_spans([interim_hops(h) for h in rooms]),
        }
    return figures


def interim_hops(h: Heard) -> list[tuple[str, float]]:
    """Where the first interim caption's time went, from speech onset to the listener: the audio the first
    request waited for (and its way through Janus to the gateway), each stage's queue and work (the message's
    stamps), and the way from the last stage through `results` and the gateway to the listener."""
    stamps, onset = h.interim_stamps, h.spoken.onset_at
    if not stamps or onset is None or h.first_interim_at is None:
        return []
    first, last = stamps[0][1], stamps[-1][1]
    return [("onset->captured", first - onset), *stage_spans(stamps), ("results->listener", h.first_interim_at - last)]


def mean_spans(rows: Sequence[Sequence[tuple[str, float]]]) -> dict[str, float]:
    spans: dict[str, list[float]] = {}
    for row in rows:
        for name, seconds in row:
            spans.setdefault(name, []).append(seconds)
    return {name: round(float(np.mean(v)), 4) for name, v in spans.items()}


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
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [3, 2, 2]})
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
    plot_by_targets(summary.get("by_targets", {}), middle)
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


def plot_by_targets(by_count: dict[str, Any], axes: Any) -> None:
    """First interim caption after onset, p50 and p95 over every listener, per number of target languages."""
    counts = sorted(by_count, key=int)
    x = np.arange(len(counts))
    for offset, key in ((-0.2, "p50"), (0.2, "p95")):
        values = [by_count[c]["first_interim_after_onset_s"][key] or 0.0 for c in counts]
        axes.bar(x + offset, values, width=0.4, label=key)
    axes.axhline(TARGET_FIRST_INTERIM_P95_S, color="black", linestyle="dashed", label="p95 target")
    axes.set_xticks(x, [f"{c}: {', '.join(by_count[c]['languages'])}" for c in counts])
    axes.set_xlabel("target languages in the room")
    axes.set_ylabel("seconds")
    axes.set_title("first interim caption after onset,\nevery listener")
    axes.legend()


def models_in_use(env: Mapping[str, str]) -> dict[str, str]:
    """The models the workers load from this environment, as RESULTS.md names them."""
    from benchmarks.provenance import cpu_whisper
    from workers.engines.asr.base import AsrOptions

    return {
        "asr": cpu_whisper(AsrOptions.from_env(env)),
        "mt": "Apertium",
        "tts": "Piper en_US-joe-medium (en), espeak-ng (the other languages)",
    }


# -- the run: processes, a speaker and its listeners per direction and room, what each listener saw ----------
def run(
    out_dir: Path,
    utterances: Sequence[Utterance] | None = None,
    gap_s: float = GAP_S,
    target_counts: Sequence[int] = TARGET_COUNTS,
) -> dict[str, Any]:
    """Speak `utterances` (default: the corpus) into the real service, in rooms with each of `target_counts`
    listening languages, and write latency.json and latency.png. The top-level figures are those of the
    fewest target languages (one by default)."""
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
        for count in target_counts:
            for language, target in directions:
                spoken = [u for u in chosen if (u.language, u.target) == (language, target)]
                hear = listening_languages(language, target, count)
                heard += asyncio.run(converse(base_url, f"latency-{language}-{'-'.join(hear)}", spoken, gap_s, hear))
        stamps = asyncio.run(results_stamps(redis_url))
    heard = [with_stamps(h, stamps) for h in heard]
    fewest = [h for h in heard if h.targets == min(target_counts)]
    result = {
        "benchmark": "latency",
        **provenance(models_in_use(os.environ)),
        "participants": "aiortc speaker and listeners through Janus and the gateway",
        "targets": {name: {"p50": p50, "p95": p95} for name, (p50, p95) in TARGETS.items()},
        "target_first_interim_p95_s": TARGET_FIRST_INTERIM_P95_S,
        **summarize(fewest),
        "by_targets": by_targets(heard),
        "per_utterance": [as_row(h) for h in heard],
    }
    save(result, out_dir, "latency", plot)
    print(json.dumps({k: v for k, v in result.items() if k != "per_utterance"}, indent=2), flush=True)
    return result


def listening_languages(language: str, target: str, count: int) -> tuple[str, ...]:
    """`target` and the next of the speaker language's LISTENERS: `count` languages in all."""
    others = [hear for hear in LISTENERS.get(language, ()) if hear not in (language, target)]
    chosen = (target, *others)[:count]
    if len(chosen) < count:
        raise ValueError(f"{language} speech has {len(chosen)} listening languages here, not {count}")
    return chosen


async def converse(
    base_url: str,
    room: str,
    utterances: Sequence[Utterance],
    gap_s: float,
    hear: Sequence[str],
    token_for: Callable[[str, str], str] | None = None,
) -> list[Heard]:
    """One speaker says `utterances` in their language while one listener per language of `hear` listens;
    `token_for(room, name)` gives each their join token where the service requires one."""
    from benchmarks.participant import ScriptedParticipant

    language = utterances[0].language
    voice = ScriptedSpeaker(utterances, lead_s=RUN_LEAD_S, gap_s=gap_s)
    listeners = [ScriptedParticipant(base_url, room, f"Listener-{h}", h, h) for h in hear]
    speaker = ScriptedParticipant(base_url, room, "Speaker", language, language)
    try:
        token = token_for or (lambda room, name: "")
        for listener in listeners:
            silent = ScriptedSpeaker((), lead_s=voice.duration_s + RUN_LEAD_S).track()
            await listener.join(silent, token=token(room, listener.name))
        await speaker.join(voice.track(), token=token(room, speaker.name))
        for listener in listeners:
            await listener.listen_to_translation(FEED_TIMEOUT_S)
        await asyncio.wait_for(voice.done.wait(), voice.duration_s + FEED_TIMEOUT_S)
        for listener in listeners:
            await last_final(listener, voice.spoken[-1].onset_at or 0.0)
    finally:
        await speaker.close()
        for listener in listeners:
            await listener.close()
    return [
        what_was_heard(room, voice.spoken, i, listener.hear, len(hear), *seen(listener))
        for listener in listeners
        for i in range(len(voice.spoken))
    ]


def seen(listener: Any) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    return listener.messages, listener.message_times, listener.translated_sound_at


async def last_final(listener: Any, since: float) -> None:
    """Until `listener` shows a final caption after `since`, or TAIL_S passed: a final that never comes is
    counted as missed."""
    with contextlib.suppress(AssertionError):
        await listener.wait_for(lambda: final_since(listener, since), "the last final caption", TAIL_S)


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
    language: str,
    targets: int,
    messages: Sequence[dict[str, Any]],
    times: Sequence[float],
    sound_at: Sequence[float],
) -> Heard:
    """What reached the listener of `language` between utterance `index`'s onset and the next one's."""
    this = spoken[index]
    start = this.onset_at or 0.0
    until = spoken[index + 1].onset_at or float("inf") if index + 1 < len(spoken) else float("inf")
    captions = [(t, m) for m, t in zip(messages, times, strict=True)
                if m["type"] == "caption" and m["lang"] == language and start <= t < until]  # fmt: skip
    interims = [(t, m) for t, m in captions if not m["final"] and m["text"]]
    finals = [(t, m) for t, m in captions if m["final"]]
    end = this.end_at or start
    starts = [t for t in sound_starts(sound_at) if start <= t < until]
    after_end = [t for t in starts if t >= end]
    first_interim = interims[0][1] if interims else None
    return Heard(
        this,
        language=language,
        targets=targets,
        room=room,
        first_interim_at=interims[0][0] if interims else None,
        first_interim=(room, first_interim["seq"], first_interim["revision"], language) if first_interim else None,
        final_caption_at=finals[-1][0] if finals else None,
        speech_started_at=after_end[0] if after_end else None,
        spoke_over=len(after_end) < len(starts),
        final_seq=finals[-1][1]["seq"] if finals else None,
        interim_updates=sum(t < end for t, _ in interims),
    )


@dataclass
class ResultsStamps:
    """The stamps of the messages on `results`: translated speech by (room, seq), interim captions by key."""

    speech: dict[tuple[str, int | None], Stamps] = field(default_factory=dict)
    interims: dict[InterimKey, Stamps] = field(default_factory=dict)


def with_stamps(h: Heard, stamps: ResultsStamps) -> Heard:
    interim = stamps.interims.get(h.first_interim, ()) if h.first_interim else ()
    return dataclasses.replace(h, final_stamps=stamps.speech.get((h.room, h.final_seq), ()), interim_stamps=interim)


async def results_stamps(redis_url: str, streams: Sequence[str] = ("results",)) -> ResultsStamps:
    """The stamps of every translated speech and interim caption on the results `streams` (one per media node):
    where their time went."""
    from pipeline.bus import Bus
    from pipeline.config import BusOptions

    bus = Bus.connect(BusOptions(redis_url=redis_url))
    stamps = ResultsStamps()
    try:
        for stream in streams:
            last_id: bytes | str = "0-0"
            while deliveries := await bus.tail(stream, last_id, count=500):
                last_id = deliveries[-1].entry_id
                for message in (d.message for d in deliveries):
                    if isinstance(message, SynthesizedSpeech):
                        stamps.speech[(message.room, message.seq)] = message.stamps
                    elif isinstance(message, InterimTranscript | InterimTranslation):
                        key = (message.room, message.seq, message.revision, message.language)
                        stamps.interims[key] = message.stamps
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
        "listener": h.language,
        "targets": h.targets,
        "duration_s": round(h.spoken.utterance.duration_s, 2),
        "first_interim_after_onset_s": after(h.first_interim_at, h.spoken.onset_at),
        "final_caption_after_end_s": after(h.final_caption_at, h.spoken.end_at),
        "speech_start_after_end_s": after(h.speech_started_at, h.spoken.end_at),
        "interim_updates": h.interim_updates,
    }
