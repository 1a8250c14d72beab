"""Cost of a meeting against its size: naive all-pairs processing versus turn-taking with fan-out.

Model, in stage invocations per minute of speech (S stages: ASR, MT, TTS; SEGMENTS_PER_MINUTE segments):
- naive: every participant's audio is processed for every other participant, whole pipeline per pair:
  N * (N - 1) * S * segments per minute.
- turn-taking: one speaker holds the floor; ASR runs once per segment, MT and TTS once per distinct
  target language k among the listeners (k <= N - 1), fanned out to all listeners of that language:
  segments per minute * (1 + (S - 1) * k). It does not depend on N at all, only on k.

Measured: a short espeak-ng clip, cut by the segmenter, goes through the real stages
(workers.asr, workers.mt, workers.tts) on this machine. For each row with N <= measure_up_to the
turn-taking way is run for real (ASR once, then MT + TTS once per target language). The naive way is
run for real for N <= NAIVE_MEASURED_UP_TO (N * (N - 1) whole-pipeline runs) and estimated beyond it
from the measured mean cost of each stage; each row says which.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import cpu_whisper, provenance
from pipeline.audio import Samples, read_wav
from pipeline.messages import Message, SpeechSegment, SynthesizedSpeech, Transcript, Translation
from pipeline.segmenter import Segmenter, SegmenterOptions
from workers.stage import Stage

PARTICIPANTS = (2, 4, 8, 16, 32)
LANGUAGES = (1, 2, 4, 8)
STAGES = ("asr", "mt", "tts")
SEGMENT_S = 4.0  # typical segment closed at a natural pause
SEGMENTS_PER_MINUTE = 60.0 / SEGMENT_S
NAIVE_MEASURED_UP_TO = 4  # beyond this the naive runs (N*(N-1) pipelines) are estimated, not run

SPEAKER_LANGUAGE = "en"
MODELS = {
    "asr": cpu_whisper(),
    "mt": "Apertium",
    "tts": "espeak-ng, Piper en_US-joe-medium",
}
# Languages to try as targets; those the real MT and TTS stages actually serve from English are used (offline
# Apertium: es, ca, gl directly, pt and fr through es).
CANDIDATE_TARGETS = ("es", "ca", "gl", "pt", "fr", "it", "de", "ro", "oc", "eo")
PROBE_TEXT = "Good morning everyone."
CLIP_TEXT = "Good morning everyone. Today we will review the budget for the new office."


def naive_units(participants: int, segments_per_minute: float = SEGMENTS_PER_MINUTE) -> float:
    return participants * (participants - 1) * len(STAGES) * segments_per_minute


def turn_taking_units(languages: int, segments_per_minute: float = SEGMENTS_PER_MINUTE) -> float:
    return segments_per_minute * (1 + (len(STAGES) - 1) * languages)


def grid() -> list[tuple[int, int]]:
    """(N, k) pairs with k <= N - 1: a room cannot have more target languages than listeners."""
    return [(n, k) for n in PARTICIPANTS for k in LANGUAGES if k <= n - 1]


def model_rows() -> list[dict[str, Any]]:
    return [
        {"participants": n, "languages": k, "naive_units": naive_units(n), "turn_taking_units": turn_taking_units(k)}
        for n, k in grid()
    ]


def target_languages(k: int, available: Sequence[str]) -> list[str]:
    """k distinct runs; beyond the available languages, available ones repeat as separate runs ("es#2")."""
    size = len(available)
    return [available[i % size] + (f"#{i // size + 1}" if i >= size else "") for i in range(k)]


# -- measuring ------------------------------------------------------------------------------------


class Timer:
    """Seconds spent in each stage's `process`, per call."""

    def __init__(self, stages: Mapping[str, Stage]) -> None:
        self.stages = stages
        self.calls: dict[str, list[float]] = {kind: [] for kind in STAGES}

    def process(self, kind: str, message: Message) -> Sequence[Message]:
        start = time.perf_counter()
        out = self.stages[kind].process(message)
        self.calls[kind].append(time.perf_counter() - start)
        return out

    def total(self) -> float:
        return sum(sum(v) for v in self.calls.values())

    def mean(self, kind: str) -> float:
        return float(np.mean(self.calls[kind])) if self.calls[kind] else 0.0


def transcribe(timer: Timer, segment: SpeechSegment) -> Transcript:
    out = [m for m in timer.process("asr", segment) if isinstance(m, Transcript)]
    if not out:
        raise RuntimeError("the ASR stage returned no transcript for the benchmark clip")
    return out[0]


def translate_and_speak(timer: Timer, transcript: Transcript, language: str) -> None:
    """One target-language run: MT then TTS, as the mt and tts workers would do it."""
    request = dataclasses.replace(transcript, targets=(language.split("#")[0],))
    for translation in (m for m in timer.process("mt", request) if isinstance(m, Translation)):
        speech = timer.process("tts", translation)
        if not any(isinstance(m, SynthesizedSpeech) for m in speech):
            raise RuntimeError(f"the TTS stage produced no speech for {translation.language}")


def turn_taking_run(stages: Mapping[str, Stage], segments: Sequence[SpeechSegment], runs: Sequence[str]) -> Timer:
    timer = Timer(stages)
    for segment in segments:
        transcript = transcribe(timer, segment)
        for language in runs:
            translate_and_speak(timer, transcript, language)
    return timer


def naive_run(
    stages: Mapping[str, Stage], segments: Sequence[SpeechSegment], n: int, available: Sequence[str]
) -> Timer:
    """Every (speaker, listener) pair runs the whole pipeline on the clip."""
    timer = Timer(stages)
    for pair in range(n * (n - 1)):
        for segment in segments:
            translate_and_speak(timer, transcribe(timer, segment), available[pair % len(available)])
    return timer


def reachable_targets(stages: Mapping[str, Stage]) -> list[str]:
    """Candidates the real MT translates (no "untranslated" note) and TTS voices; warms both stages too."""
    probe = Transcript(room="bench", speaker="probe", seq=0, language=SPEAKER_LANGUAGE, text=PROBE_TEXT)
    translations = stages["mt"].process(dataclasses.replace(probe, targets=CANDIDATE_TARGETS))
    return [t.language for t in translations if isinstance(t, Translation) and not t.note and stages["tts"].process(t)]


def synthesize_clip(text: str = CLIP_TEXT) -> Samples:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", str(wav), text], check=True)
        return read_wav(wav)


def clip_segments(clip: Samples) -> list[SpeechSegment]:
    """The clip as the gateway would send it: cut by the segmenter."""
    padded = np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(16000, np.float32)])
    segmenter = Segmenter(SegmenterOptions())
    cuts = segmenter.feed(padded) + segmenter.flush()
    return [c.to_message("bench", "speaker", i, SPEAKER_LANGUAGE) for i, c in enumerate(cuts)]


def load_stages() -> dict[str, Stage]:
    """The real stages with their default options (no environment: this is not an entry point)."""
    from workers.registry import build_stage

    stages = {kind: build_stage(kind, {}) for kind in STAGES}
    for stage in stages.values():
        stage.load()
    return stages


def measure(
    rows: list[dict[str, Any]], segments: Sequence[SpeechSegment], stages: Mapping[str, Stage], up_to: int
) -> dict[str, Any]:
    available = reachable_targets(stages)
    if not available:
        raise RuntimeError(f"the MT and TTS stages serve none of {CANDIDATE_TARGETS} from {SPEAKER_LANGUAGE}")
    transcribe(Timer(stages), segments[0])  # warm-up: the first call of a model pays one-off costs
    per_stage: dict[str, list[float]] = {kind: [] for kind in STAGES}
    naive_measured: dict[int, float] = {}
    for row in rows:
        n, k = row["participants"], row["languages"]
        if n > up_to:
            continue
        runs = target_languages(k, available)
        timer = turn_taking_run(stages, segments, runs)
        row["measured_compute_s"] = round(timer.total(), 4)
        row["measured_target_runs"] = runs
        for kind in STAGES:
            per_stage[kind] += timer.calls[kind]
        if n <= NAIVE_MEASURED_UP_TO and n not in naive_measured:
            naive_measured[n] = naive_run(stages, segments, n, available).total()
    means = {kind: float(np.mean(v)) if v else 0.0 for kind, v in per_stage.items()}
    pipeline_s = sum(means.values()) * len(segments)
    for row in rows:
        n = row["participants"]
        if n > up_to:
            continue
        if n in naive_measured:
            row["naive_compute_s"], row["naive_compute_source"] = round(naive_measured[n], 4), "measured"
        else:
            row["naive_compute_s"] = round(n * (n - 1) * pipeline_s, 4)
            row["naive_compute_source"] = "estimated: N*(N-1) x measured mean ASR+MT+TTS per segment"
    return {
        "target_languages": available,
        "languages": (
            f"real target languages reachable offline from {SPEAKER_LANGUAGE}: {', '.join(available)}; a row needing "
            f"more than {len(available)} repeats one of them as a separate, labelled run ('es#2'): the same work "
            "a further language would cost"
        ),
        "per_stage_mean_s": {k: round(v, 4) for k, v in means.items()},
    }


# -- report ---------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'N':>3} {'k':>2} {'naive units/min':>16} {'turn-taking units/min':>22} {'measured s':>11} {'naive s':>9}"
    ]
    for r in rows:
        measured, naive = "-", "-"
        if "measured_compute_s" in r:
            measured = f"{r['measured_compute_s']:.2f}"
            naive = f"{r['naive_compute_s']:.2f}" + ("" if r["naive_compute_source"] == "measured" else "*")
        lines.append(
            f"{r['participants']:>3} {r['languages']:>2} {r['naive_units']:>16.0f} {r['turn_taking_units']:>22.0f} "
            f"{measured:>11} {naive:>9}"
        )
    return "\n".join(lines) + "\n(* naive seconds estimated from measured per-stage costs)"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (units_ax, measured_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    naive = sorted({(r["participants"], r["naive_units"]) for r in rows})
    units_ax.plot(*zip(*naive, strict=True), "k-o", label="naive N(N-1)")
    for k in LANGUAGES:
        points = sorted((r["participants"], r["turn_taking_units"]) for r in rows if r["languages"] == k)
        units_ax.plot(*zip(*points, strict=True), "--s", label=f"turn-taking, k={k}")
    units_ax.set(xscale="log", yscale="log", xlabel="participants N", ylabel="stage invocations / min of speech")
    units_ax.set_xticks(PARTICIPANTS, [str(n) for n in PARTICIPANTS])
    units_ax.set_xticks([], minor=True)
    units_ax.legend(fontsize=8)
    units_ax.set_title("model")
    measured = [r for r in rows if "measured_compute_s" in r]
    for n in sorted({r["participants"] for r in measured}):
        same_n = sorted((r for r in measured if r["participants"] == n), key=lambda r: int(r["languages"]))
        ks = [r["languages"] for r in same_n]
        measured_ax.plot(ks, [r["measured_compute_s"] for r in same_n], "-o", label=f"turn-taking, N={n}")
        color = measured_ax.lines[-1].get_color()
        measured_ax.axhline(
            same_n[0]["naive_compute_s"],
            linestyle=":",
            color=color,
            label=f"naive, N={n}" + ("" if same_n[0]["naive_compute_source"] == "measured" else " (estimated)"),
        )
    measured_ax.set(yscale="log", xlabel="target languages k", ylabel="compute seconds for the clip")
    if measured:
        measured_ax.legend(fontsize=8)
    measured_ax.set_title("measured on this machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    out_dir: Path,
    measure_up_to: int = 8,
    stages: Mapping[str, Stage] | None = None,
    clip: Samples | None = None,
) -> dict[str, Any]:
    """Write out_dir/scaling.json and out_dir/scaling.png; `measure_up_to=0` skips the real runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = model_rows()
    result: dict[str, Any] = {
        **provenance(MODELS),
        "stages": list(STAGES),
        "segment_s": SEGMENT_S,
        "segments_per_minute": SEGMENTS_PER_MINUTE,
        "units": "stage invocations per minute of speech",
        "naive_formula": "N*(N-1)*stages*segments_per_minute",
        "turn_taking_formula": "segments_per_minute*(1 + (stages-1)*k)",
    }
    if measure_up_to >= min(PARTICIPANTS):
        segments = clip_segments(synthesize_clip() if clip is None else clip)
        stages = load_stages() if stages is None else stages
        result["measured"] = {
            "clip_s": round(sum(s.duration_s for s in segments), 3),
            "segments": len(segments),
            "speaker_language": SPEAKER_LANGUAGE,
            "measured_compute_s": (
                "turn-taking: ASR once per segment + MT and TTS once per target run, real stages "
                "(workers.asr/mt/tts, default options), loaded and warmed before timing; sum of process() times"
            ),
            **measure(rows, segments, stages, measure_up_to),
        }
    result["rows"] = rows
    (out_dir / "scaling.json").write_text(json.dumps(result, indent=2))
    plot(rows, out_dir / "scaling.png")
    print(table(rows))
    return result
