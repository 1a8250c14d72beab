"""The benchmark suite: the load's schedule, `bench gpu --tiny` and `bench pipeline` with tiny random torch models
through the real workers and a real redis-server, and RESULTS.md regenerated from whatever JSONs are present."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from babelroom.cli import main, rooms_list
from babelroom.supervisor import babelroom_argv
from benchmarks import harness, models, pipeline, report
from benchmarks.provenance import result_stem
from pipeline.messages import SAMPLE_RATE
from tests.speech import espeak

PNG = b"\x89PNG\r\n\x1a\n"


def worker_argv(kind: str) -> list[str]:
    return babelroom_argv("worker", kind)


def test_speakers_talk_at_real_time_rate_out_of_step() -> None:
    clips = (np.zeros(2 * SAMPLE_RATE, np.float32), np.zeros(4 * SAMPLE_RATE, np.float32))
    load = harness.Load(clips, rooms=2, utterances=3, targets=("es",), pause_s=0.5)
    plan = harness.schedule(load, "run")
    assert [u.ready_s for u in plan] == sorted(u.ready_s for u in plan)
    room0 = [u.ready_s for u in plan if u.room == "run-room0"]
    assert room0 == [2.0, 6.5, 9.0]  # each segment is ready when its speech ends; a pause between them
    room1 = [u.ready_s for u in plan if u.room == "run-room1"]
    assert room1[0] == pytest.approx(3.5 / 2 + 4.0)  # half a period late, starting with the other clip
    message = harness.segment_message(plan[0], load)
    assert message.targets == ("es",) and message.duration_s == 2.0 and len(message.pcm) == 4 * SAMPLE_RATE


def test_summary_and_speedups() -> None:
    figures = harness.summary([1.0, 2.0, 3.0, 10.0], span_s=8.0, expected=5)
    assert figures["finished"] == 4 and figures["segments"] == 5 and figures["p50_s"] == 2.5
    assert figures["throughput_per_s"] == 0.5 and figures["max_s"] == 10.0
    rows: list[dict[str, Any]] = [
        {"way": "sequential", "concurrency": 0, "rooms": 4, "p50_s": 6.0},
        {"way": "pipelined", "concurrency": 2, "rooms": 4, "p50_s": 2.0},
    ]
    assert pipeline.speedups(rows) == {"pipelined": {"4": 3.0}}
    assert (
        result_stem("gpu", "cpu", True, "cuda") == "gpu-cpu-tiny" and result_stem("gpu", "cuda", False, "cuda") == "gpu"
    )


def test_rooms_are_numbers() -> None:
    assert rooms_list("1,2,4") == (1, 2, 4)
    for bad in ("1,x", "0,2"):
        with pytest.raises(Exception, match=r"expected numbers|1 or more"):
            rooms_list(bad)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    models.model_set(root, pipeline.GPU_TARGETS, tiny=True)
    return root


@pytest.mark.slow
def test_bench_gpu_tiny_measures_every_stage_and_the_real_workers(
    tiny_models: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "results"
    assert main(["bench", "gpu", "--tiny", "--out", str(out), "--models", str(tiny_models)]) == 0
    result = json.loads((out / "gpu-cpu-tiny.json").read_text())
    assert (out / "gpu-cpu-tiny.png").read_bytes()[:8] == PNG
    assert "cores of an" in result["machine"] and "no GPU" in result["machine"] and result["date"]
    assert set(result["models"]) == {"asr", "mt", "tts"} and "random weights" in result["models"]["asr"]
    assert {(r["stage"], r["batch"]) for r in result["stages"]} == {
        (s, b) for s in ("asr", "mt", "tts") for b in (1, 4)
    }
    assert all(
        r["seconds"] > 0 and r["cost_tau"] == pytest.approx(r["tau"] / r["batch"], rel=0.01) for r in result["stages"]
    )
    assert result["sum_batch1_s"] == pytest.approx(
        sum(r["seconds"] for r in result["stages"] if r["batch"] == 1), abs=0.002
    )
    first = result["e2e"][0]
    assert first["rooms"] == 1 and first["finished"] == first["segments"] == 2  # every segment came out as speech
    assert 0 < first["p50_s"] <= first["p95_s"]
    passing = [r["rooms"] for r in result["e2e"] if r["p95_s"] is not None and r["p95_s"] <= result["latency_bound_s"]]
    assert result["rooms_per_gpu"] == max(passing, default=0)

    markdown = tmp_path / "RESULTS.md"
    text = report.run(out, markdown)
    assert "## GPU engines (cpu, tiny random models: a smoke run, not GPU figures)" in text
    assert result["machine"] in text and "![gpu-cpu-tiny](results/gpu-cpu-tiny.png)" in text
    assert "## GPU engines on a GPU: not measured" in text  # no cuda figures here


@pytest.mark.slow
def test_bench_pipeline_serves_the_same_load_sequentially_and_pipelined(
    tiny_models: Path, redis_url: str, tmp_path: Path
) -> None:
    built = models.model_set(tiny_models, pipeline.GPU_TARGETS, tiny=True)
    clips = (espeak("Hola a todos.", "es"), espeak("Buenos días.", "es"))
    sequential, _, pipelined = (w.name for w in pipeline.ways("cpu"))
    result = pipeline.run(
        tmp_path, redis_url, worker_argv, "cpu", built, rooms=(2,), utterances=1, tiny=True, clips=clips,
        only=(sequential, pipelined),
    )  # fmt: skip
    assert (tmp_path / "pipeline-tiny.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "pipeline-tiny.json").read_text()) == result
    assert [r["way"] for r in result["rows"]] == [sequential, pipelined]
    for r in result["rows"]:
        assert r["finished"] == r["segments"] == 2 and r["p50_s"] > 0 and r["throughput_per_s"] > 0
    assert set(result["p50_speedup"]) == {pipelined}


def test_report_takes_every_json_present_and_names_machine_date_models(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    stages = {"machine": "2 cores of an Example CPU", "date": "2030-01-02", "models": {"asr": "Whisper base"}}
    stages["stages"] = [{"stage": "asr", "engine": "fw", "language": "en", "tau_p50": 0.2, "tau_p95": 0.3}]
    (results / "stages.json").write_text(json.dumps(stages))
    (results / "future.json").write_text(json.dumps({"machine": "m", "date": "d", "fps": 25.0, "frames": [1, 2]}))
    shutil.copyfile(Path(__file__).parent.parent / "README.md", results / "notes.md")  # not a JSON: ignored
    text = report.run(results, tmp_path / "RESULTS.md")
    assert (tmp_path / "RESULTS.md").read_text() == text
    assert text.index("## Real-time factor per stage") < text.index("## future")  # known ones first
    assert "Measured on 2 cores of an Example CPU, 2030-01-02. Models: asr: Whisper base." in text
    assert "| fps | 25.0 |" in text and "frames" not in text  # an unknown benchmark: its top-level figures
    assert "pipeline" not in text.split("## GPU engines on a GPU")[0]  # missing benchmarks are skipped


def test_report_renders_the_committed_results(tmp_path: Path) -> None:
    """RESULTS.md comes from the JSONs in results/: every one gets its section, with its own figures."""
    committed = Path(__file__).parent.parent / "results"
    shutil.copytree(committed, tmp_path / "results", ignore=shutil.ignore_patterns("*.png", "logs"))
    text = report.run(tmp_path / "results", tmp_path / "RESULTS.md")
    figures = {path.stem: json.loads(path.read_text()) for path in committed.glob("*.json")}
    assert len(text.split("\n## ")) - 1 >= len(figures)
    media, lipsync, latency = figures["media"], figures["lipsync"], figures["latency"]
    assert f"| {media['janus'][-1]['participants']} | {media['janus'][-1]['cores']} |" in text
    assert all(f"| {row['engine']} | {row['size']} | {row['fps']} |" in text for row in lipsync["rows"])
    final = latency["final_caption_after_end_s"]
    assert f"| final translated caption after end of speech | {final['p50']} | {final['p95']} |" in text
