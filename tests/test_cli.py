"""The `babelroom` command's own paths: join links, a file translated end to end, argument errors."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from babelroom.cli import main
from benchmarks.talking_head import talking_head_frames
from gateway.web.tokens import verify_token
from pipeline.audio import write_wav
from pipeline.messages import SAMPLE_RATE
from pipeline.video import read_video, write_mp4, write_y4m
from tests.speech import espeak, silence
from workers.lipsync_metric import PASS_CORRELATION, PASS_LAG_FRAMES


def test_token_prints_a_join_link_that_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BABELROOM_TOKEN_SECRET", "s3cret")
    assert main(["token", "standup", "--name", "Ana María", "--base-url", "https://meet.example.org/"]) == 0
    link = urlparse(capsys.readouterr().out.strip())
    assert link.path == "/room/standup"
    query = parse_qs(link.query)
    claims = verify_token("s3cret", query["token"][0], "standup")
    assert claims.name == "Ana María" and query["name"] == ["Ana María"]


def test_token_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BABELROOM_TOKEN_SECRET", raising=False)
    assert main(["token", "standup", "--name", "Ana"]) == 2
    assert "BABELROOM_TOKEN_SECRET" in capsys.readouterr().err


@pytest.mark.slow
def test_translate_writes_result_and_speech(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "in.wav"
    write_wav(wav, [*silence(0.3), *espeak("the house is big"), *silence(0.3)])
    assert main(["translate", str(wav), "--from", "en", "--to", "es", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert "house" in result["transcript"].lower() and "casa" in result["translation"].lower()
    assert set(result["timings"]) >= {"asr", "mt", "tts"}
    assert (tmp_path / "out" / "speech.wav").stat().st_size > 10_000


def test_translate_of_a_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", str(tmp_path / "nope.wav"), "--from", "en", "--to", "es", "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_translate_dubs_and_lip_syncs_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An English talking-head video (the astronaut photo, moving, with English speech) in; a Spanish video
    out, its mouth measured in sync with the Spanish speech."""
    english = np.concatenate([silence(0.3), espeak("the house is very big and my mother is happy"), silence(0.3)])
    seconds = english.size / SAMPLE_RATE
    source = tmp_path / "speaker.mp4"
    write_mp4(source, talking_head_frames(seconds, 25.0), 25.0, english)
    out = tmp_path / "out"
    assert main(["translate", str(source), "--from", "en", "--to", "es", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    print(f"\n{result['translation']!r}: lipsync {result['lipsync']}, timings {result['timings']}")
    assert "casa" in result["translation"].lower()
    assert result["lipsync"]["corr"] >= PASS_CORRELATION and abs(result["lipsync"]["lag_frames"]) <= PASS_LAG_FRAMES
    dubbed = read_video(out / "video.mp4")
    assert len(dubbed.frames) == result["video"]["frames"] and dubbed.fps == pytest.approx(25.0)
    assert abs(dubbed.audio.size / SAMPLE_RATE - result["speech_s"]) < 0.1  # the Spanish speech is its sound
    captions = (out / "captions.vtt").read_text()
    assert captions.startswith("WEBVTT") and "casa" in captions.lower() and " --> " in captions


def test_translate_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    silent = tmp_path / "silent.y4m"
    write_y4m(silent, talking_head_frames(0.2, 25.0), 25)
    assert main(["translate", str(silent), "--from", "en", "--to", "es", "--out", str(tmp_path / "out")]) == 2
    assert "no sound to translate" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["translate", str(tmp_path / "notes.txt"), "--from", "en", "--to", "es", "--out", str(tmp_path)]) == 2
    assert "expected .wav or .mp4" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    assert main(["translate", str(broken), "--from", "en", "--to", "es", "--out", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["translate", "IN", "--from", "en", "--to", "xx", "--out", "OUT"], {}, "unknown language code 'xx'"),
        (["translate", "NOT_WAV", "--from", "en", "--to", "es", "--out", "OUT"], {}, "not a readable audio file"),
        (["up"], {"BABELROOM_OVERLAP": "bogus"}, "BABELROOM_OVERLAP='bogus': choose one of queue, captions_only"),
        (["up"], {"BABELROOM_LATE_BOUND_S": "nan"}, "BABELROOM_LATE_BOUND_S='nan': expected a finite number"),
        (["worker", "mt"], {"BABELROOM_CLAIM_IDLE_MS": "soon"}, "BABELROOM_CLAIM_IDLE_MS='soon': expected a whole"),
        (["token", "r", "--name", "Ana", "--ttl", "nan"], {"BABELROOM_TOKEN_SECRET": "s"}, "lifetime must be"),
        (["token", "r", "--name", "Ana"], {"BABELROOM_LOG_LEVEL": "loud", "BABELROOM_TOKEN_SECRET": "s"}, "LOG_LEVEL"),
        (["up"], {"BABELROOM_TLS_CERT": "NOT_WAV", "BABELROOM_TLS_KEY": "NOT_WAV"}, "not a PEM certificate"),
        (["up"], {"BABELROOM_TURN_URLS": "turn:t.example.org:3478"}, "needs BABELROOM_TURN_SECRET"),
    ],
)
def test_errors_are_one_clear_line(
    argv: list[str],
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "in.wav").write_bytes(b"RIFF....WAVEfmt \x10\x00\x00\x00")
    (tmp_path / "not.wav").write_text("this is text, not audio\n")
    paths = {"IN": str(tmp_path / "in.wav"), "NOT_WAV": str(tmp_path / "not.wav"), "OUT": str(tmp_path / "out")}
    for name, value in env.items():
        monkeypatch.setenv(name, paths.get(value, value))
    assert main([paths.get(arg, arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
