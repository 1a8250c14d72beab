"""The latency benchmark's parts that run without the gateway: the utterance corpus, the scripted aiortc
speaker (real-time pacing, onset and end times), and the summary and plot of what a listener received."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.latency import (
    FRAME_SAMPLES,
    WIRE_RATE,
    Heard,
    ScriptedSpeaker,
    Spoken,
    Utterance,
    corpus,
    plot,
    summarize,
)
from pipeline.audio import pcm16_to_float, resample
from pipeline.messages import SAMPLE_RATE
from tests.speech import espeak


@pytest.mark.slow
def test_corpus_has_twenty_utterances_each_way_of_1_to_10_s() -> None:
    utterances = corpus()
    durations = [u.duration_s for u in utterances]
    print(f"\n{len(utterances)} utterances, {min(durations):.1f}-{max(durations):.1f} s of speech")
    assert len(utterances) >= 20
    assert {(u.language, u.target) for u in utterances} == {("en", "es"), ("es", "en")}
    assert all(1.0 <= d <= 10.0 for d in durations) and max(durations) >= 8.0


def short_utterances() -> list[Utterance]:
    return [Utterance("en", "es", text, espeak(text)[1600:-1600]) for text in ("hello there", "good morning")]


async def test_speaker_speaks_in_real_time_and_notes_onsets_and_ends() -> None:
    utterances = short_utterances()
    speaker = ScriptedSpeaker(utterances, lead_s=0.2, gap_s=0.3)
    started, pcm = time.monotonic(), b""
    while (frame := await speaker.next_frame()) is not None:
        pcm += frame[0]
    elapsed = time.monotonic() - started
    print(f"\n{speaker.duration_s:.2f} s of audio sent in {elapsed:.2f} s")
    assert abs(elapsed - speaker.duration_s) < 0.1 + 0.05 * speaker.duration_s
    assert pcm == speaker.pcm and speaker.done.is_set()
    sent = pcm16_to_float(pcm)
    first, second = speaker.spoken
    for spoken, utterance, (start, end) in zip(speaker.spoken, utterances, speaker.spans, strict=True):
        assert spoken.onset_at is not None and spoken.end_at is not None
        assert spoken.end_at - spoken.onset_at == pytest.approx(utterance.duration_s, abs=0.03)
        expected = resample(utterance.samples, SAMPLE_RATE, WIRE_RATE)
        np.testing.assert_allclose(sent[start:end], expected, atol=2 / 32768)
    assert first.end_at is not None and second.onset_at is not None
    assert second.onset_at - first.end_at == pytest.approx(0.3, abs=0.03)


async def test_aiortc_track_sends_48khz_20ms_frames() -> None:
    pytest.importorskip("aiortc")
    from aiortc.mediastreams import MediaStreamError

    speaker = ScriptedSpeaker(short_utterances()[:1], lead_s=0.05, gap_s=0.05)
    track = speaker.track()
    frames = []
    with pytest.raises(MediaStreamError):
        while True:
            frames.append(await asyncio.wait_for(track.recv(), timeout=2))
    assert len(frames) == speaker.frames
    assert {(f.sample_rate, f.samples, f.format.name, f.layout.name) for f in frames} == {
        (WIRE_RATE, FRAME_SAMPLES, "s16", "mono")
    }
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(len(frames))]


def test_summary_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    heard, finals = [], []
    for i in range(21):
        spoken = Spoken(Utterance("en", "es", "x", np.zeros(16, np.float32)), onset_at=100.0 * i, end_at=100.0 * i + 3)
        final = float(rng.uniform(0.5, 2.0))
        finals.append(final)
        stamps = (("captured", 0.0), ("published", 0.01), ("asr.start", 0.012), ("asr", 0.2 + i / 100))
        heard.append(Heard(spoken, first_interim_at=100.0 * i + 0.8, final_caption_at=100.0 * i + 3 + final,
                           speech_started_at=100.0 * i + 3.9, final_stamps=stamps))  # fmt: skip
    heard.append(Heard(Spoken(heard[0].spoken.utterance, 5000.0, 5003.0)))  # nothing arrived for this one
    summary = summarize(heard)
    assert summary["utterances"] == 22 and summary["missed_final_captions"] == 1
    assert summary["final_caption_after_end_s"]["p50"] == pytest.approx(np.percentile(finals, 50), abs=1e-3)
    assert summary["final_caption_after_end_s"]["p95"] == pytest.approx(np.percentile(finals, 95), abs=1e-3)
    assert summary["first_interim_after_onset_s"]["p50"] == pytest.approx(0.8)
    assert summary["speech_start_after_end_s"]["count"] == 21
    assert summary["stage_mean_s"]["asr"] == pytest.approx(np.mean([0.188 + i / 100 for i in range(21)]), abs=1e-4)
    plot(summary, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").stat().st_size > 10_000
