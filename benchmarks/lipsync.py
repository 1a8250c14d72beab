"""What lip-sync costs per frame, step by step, and the frame rate it sustains.

The talking-head video (benchmarks/talking_head.py) at 320x240 and 640x480, with real Spanish speech from
espeak-ng and its phoneme timings, goes through the lipsync stage's work: decode the stored JPEG frames,
the engine (FaceMesh landmarks, visemes, warp; or Wav2Lip's face crops, mel and network), encode the
output JPEGs. The CPU engine's target is 25 fps at 320x240. The Wav2Lip figure uses random weights in the
real architecture (its cost does not depend on the weights); on a CPU it is far from real time, which is
why it is the GPU engine.

    babelroom bench lipsync --out DIR   # DIR/lipsync.json, DIR/lipsync.png, DIR/lipsync_frames.png
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import provenance
from benchmarks.talking_head import talking_head_frames
from pipeline.audio import float_to_pcm16, pcm16_to_float
from pipeline.frames import Frame, decode_frames, make_clip
from pipeline.messages import SAMPLE_RATE, SynthesizedSpeech, VideoClip
from workers.engines.common import EngineUnavailable
from workers.engines.lipsync.base import CPU, WAV2LIP, LipSyncer, LipSyncOptions, SyncedFrames
from workers.engines.lipsync.registry import load_lipsyncer
from workers.engines.tts.espeak import EspeakSynthesizer
from workers.engines.tts.render import render
from workers.lipsync_metric import measure_sync

SIZES = ((320, 240), (640, 480))
FPS = 25.0
TARGET_FPS = 25.0
TEXT = "Buenos días a todos. Por favor, mamá, trae el mapa de la ciudad para el viaje."
MODELS = {
    "lipsync": "mouthwarp (FaceMesh landmarks, the CPU engine); Wav2Lip-96 with random weights",
    "tts": "espeak-ng (es)",
    "video": "the talking head from scikit-image's astronaut photo",
}
REPEATS = 3  # the median of this many runs (after a warm-up run)
WAV2LIP_SECONDS = 1.6  # a shorter clip: the network is slow on a CPU


def run(out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    audio, _ = render(EspeakSynthesizer().synthesize(TEXT, "es"))
    speech = SynthesizedSpeech(
        room="bench", speaker="bench", seq=0, language="es", pcm=float_to_pcm16(audio.samples), phonemes=audio.phonemes
    )
    rows = []
    sheets: dict[str, list[Frame]] = {}
    for engine_name, options in engines():
        syncer = load_lipsyncer(options)
        for size in SIZES:
            seconds = audio.duration_s if engine_name == CPU else WAV2LIP_SECONDS
            row, frames = measure(syncer, clip_of(speech, seconds), size)
            rows.append({"engine": engine_name, **row})
            sheets[f"{engine_name} {size[0]}x{size[1]}"] = frames
            print_row(rows[-1])
    report = {
        "benchmark": "lipsync",
        **provenance(MODELS),
        "speech_s": audio.duration_s,
        "target_fps": TARGET_FPS,
        "rows": rows,
    }
    (out_dir / "lipsync.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, out_dir / "lipsync.png")
    contact_sheet(sheets[f"{CPU} 320x240"], out_dir / "lipsync_frames.png")
    return report


def engines() -> list[tuple[str, LipSyncOptions]]:
    try:
        import torch

        from workers.engines.lipsync.wav2lip import Wav2Lip96
    except (ImportError, EngineUnavailable) as exc:
        print(f"wav2lip skipped: {exc}")
        return [(CPU, LipSyncOptions())]
    checkpoint = Path(tempfile.mkdtemp(prefix="babelroom-bench-")) / "wav2lip-random.pth"
    state = {f"module.{k}": v for k, v in Wav2Lip96().state_dict().items()}  # the released layout
    torch.save({"state_dict": state}, checkpoint)
    return [(CPU, LipSyncOptions()), (WAV2LIP, LipSyncOptions(engine=WAV2LIP, model=str(checkpoint), device="cpu"))]


def clip_of(speech: SynthesizedSpeech, seconds: float) -> SynthesizedSpeech:
    samples = int(seconds * SAMPLE_RATE)
    return SynthesizedSpeech(
        room=speech.room, speaker=speech.speaker, seq=speech.seq, language=speech.language,
        pcm=speech.pcm[: samples * 2], phonemes=tuple(p for p in speech.phonemes if p.end_s <= seconds),
    )  # fmt: skip


def measure(syncer: LipSyncer, speech: SynthesizedSpeech, size: tuple[int, int]) -> tuple[dict[str, Any], list[Frame]]:
    """Per-frame cost of each step (median of REPEATS runs) and the lipsync stage's frame rate."""
    seconds = len(speech.pcm) / 2 / SAMPLE_RATE
    head = talking_head_frames(seconds + 0.2, FPS, size)
    stored = make_clip("bench", "bench", 0, head, [i / FPS for i in range(len(head))])
    one_run(syncer, speech, stored)  # warm-up: model caches, allocations
    runs = []
    for _ in range(REPEATS):
        steps, result = one_run(syncer, speech, stored)
        runs.append(steps)
    count = len(result.frames)
    per_frame = {step: statistics.median(r[step] for r in runs) / count * 1000 for step in runs[0]}
    stage_ms = per_frame["decode"] + per_frame["engine"] + per_frame["encode"]
    score = measure_sync(result.frames, result.fps, pcm16_to_float(speech.pcm), SAMPLE_RATE)
    row = {
        "size": f"{size[0]}x{size[1]}",
        "frames": count,
        "ms_per_frame": {k: round(v, 2) for k, v in per_frame.items()},
        "stage_ms_per_frame": round(stage_ms, 2),
        "fps": round(1000 / stage_ms, 1),
        "sync": score.as_dict(),
    }
    return row, result.frames


def one_run(syncer: LipSyncer, speech: SynthesizedSpeech, stored: VideoClip) -> tuple[dict[str, float], SyncedFrames]:
    """The lipsync stage's work on one segment: stored JPEGs in, the engine, JPEGs out."""
    steps: dict[str, float] = {}
    frames = timed(steps, "decode", lambda: decode_frames(stored))
    result: SyncedFrames = timed(steps, "engine", lambda: syncer.sync(speech, frames, stored.timestamps_s))
    timed(steps, "encode", lambda: make_clip("bench", "bench", 0, result.frames, result.times_s))
    return {**steps, **result.steps_s}, result


def timed(steps: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    out = work()
    steps[name] = time.perf_counter() - started
    return out


def print_row(row: dict[str, Any]) -> None:
    inner = ", ".join(f"{k} {v}" for k, v in row["ms_per_frame"].items() if k not in ("decode", "engine", "encode"))
    print(
        f"{row['engine']:8} {row['size']:8} {row['fps']:6.1f} fps  stage {row['stage_ms_per_frame']:.1f} ms/frame "
        f"(decode {row['ms_per_frame']['decode']}, engine {row['ms_per_frame']['engine']} [{inner}], "
        f"encode {row['ms_per_frame']['encode']})  sync corr {row['sync']['corr']} lag {row['sync']['lag_frames']}"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['engine']}\n{r['size']}" for r in rows]
    steps = list(dict.fromkeys(step for row in rows for step in row["ms_per_frame"] if step != "engine"))
    figure, axis = plt.subplots(figsize=(8, 4.5))
    bottom = np.zeros(len(rows))
    for step in steps:
        values = np.array([r["ms_per_frame"].get(step, 0.0) for r in rows])
        axis.bar(labels, values, bottom=bottom, label=step)
        bottom += values
    axis.axhline(1000 / TARGET_FPS, color="black", linestyle="--", label=f"{TARGET_FPS:.0f} fps")
    for x, row in enumerate(rows):
        axis.annotate(f"{row['fps']:.0f} fps", (x, bottom[x]), ha="center", va="bottom", fontsize=9)
    axis.set_ylabel("ms per frame")
    axis.set_title("Lip-sync cost per frame by step (CPU)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def contact_sheet(frames: list[Frame], path: Path, count: int = 24, columns: int = 8) -> None:
    """Every few frames, the lower face enlarged: what a person would check for jitter, edges, closure."""
    from PIL import Image

    step = max(1, len(frames) // count)
    height, width = frames[0].shape[:2]
    box = (width // 3, height * 3 // 10, width * 2 // 3, height * 3 // 5)
    tiles = [Image.fromarray(f).crop(box).resize((240, 180)) for f in frames[::step][:count]]
    sheet = Image.new("RGB", (240 * columns, 180 * (-(-len(tiles) // columns))))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (240 * (i % columns), 180 * (i // columns)))
    sheet.save(path)
