"""Interim captions, the parts that need no model: LocalAgreement, the sender's tracker, the caption payload,
the flicker measure, and the worker runtime serving interim jobs (real Redis): finals first, only the newest
job of a segment, stale ones dropped, failures dropped without retries."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from pipeline.interim import InterimOptions, InterimTracker, interim_caption, local_agreement, rewrite_rate
from pipeline.messages import (
    SAMPLE_RATE,
    InterimRequest,
    InterimTranscript,
    InterimTranslation,
    Message,
    Transcript,
    decode,
    dedup_key,
    encode,
)
from pipeline.routes import ASR_INTERIM, MT, MT_INTERIM, RESULTS, destinations
from workers.base import Worker, entry_age_s

# --- LocalAgreement ------------------------------------------------------------------------------------------


def test_commits_what_two_hypotheses_agree_on() -> None:
    first = local_agreement("", "we need to fine", "")
    assert first.committed == "" and first.text == "we need to fine"
    second = local_agreement(first.text, "We need to find a better", first.committed)
    assert second.committed == "We need to" and second.text == "We need to find a better"
    third = local_agreement(second.text, "We need to find a better solution.", second.committed)
    assert third.committed == "We need to find a better"
    assert third.text == "We need to find a better solution."


def test_committed_words_are_never_withdrawn() -> None:
    """A hypothesis that contradicts committed words (the engine ignored the prefix) cannot change them."""
    out = local_agreement("we need to find", "He needs to find a", "we need")
    assert out.committed.startswith("we need") and out.text.startswith("we need")


def test_rewrite_rate_counts_changed_shown_words() -> None:
    assert rewrite_rate(["we", "we need", "we need to go"]) == 0.0
    # 2 + 3 words shown before the last display; "need" -> "kneed" re-lays 1 word of the second display
    assert rewrite_rate(["we need", "we need to", "we kneed to"]) == pytest.approx(2 / 5)
    assert rewrite_rate(["one two", "three"]) == 1.0 and rewrite_rate(["only"]) == 0.0
    assert rewrite_rate(["Hello,", "hello there"]) == 0.0  # case and punctuation do not count


# --- the sender's tracker -----------------------------------------------------------------------------------


def reply(request: InterimRequest, text: str, committed: str = "") -> InterimTranscript:
    return InterimTranscript(
        room=request.room, speaker=request.speaker, seq=request.seq, revision=request.revision,
        language=request.language, text=text, committed=committed,
    )  # fmt: skip


def ask(tracker: InterimTracker, seq: int, seconds: float) -> InterimRequest | None:
    audio = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
    return tracker.request("room", "ana", seq, "en", ("es",), 1000, audio)


def test_tracker_asks_every_interval_and_carries_the_state() -> None:
    tracker = InterimTracker(InterimOptions(interval_s=0.5, first_interval_s=0.25, min_audio_s=0.6))
    assert ask(tracker, 3, 0.4) is None  # too little audio yet
    first = ask(tracker, 3, 0.6)
    assert first is not None and first.revision == 0 and first.previous == first.committed == ""
    assert (first.start_sample, first.end_sample, len(first.pcm)) == (1000, 1000 + 9600, 2 * 9600)
    assert ask(tracker, 3, 0.8) is None  # not yet due: 0.2 s since the last request
    retry = ask(tracker, 3, 0.85)  # no words heard yet: asks again after the first interval
    assert retry is not None and retry.revision == 1
    assert tracker.accept(reply(retry, "we need", ""))
    assert ask(tracker, 3, 1.2) is None  # words heard: every interval now, 0.35 s since the last request
    second = ask(tracker, 3, 1.35)
    assert second is not None and second.revision == 2 and second.previous == "we need"


def test_tracker_ignores_stale_and_closed_replies() -> None:
    tracker = InterimTracker(InterimOptions(interval_s=0.5))
    r0 = ask(tracker, 1, 0.6)
    r1 = ask(tracker, 1, 1.2)
    assert r0 is not None and r1 is not None
    assert tracker.accept(reply(r1, "we need to", "we"))
    assert not tracker.accept(reply(r0, "we"))  # older than what is shown
    assert tracker.committed == "we" and tracker.previous == "we need to"
    tracker.close(1)
    r2 = ask(tracker, 1, 1.8)
    assert r2 is None  # the segment closed: no more requests for it
    next_segment = ask(tracker, 2, 0.6)
    assert next_segment is not None and next_segment.revision == 0 and next_segment.committed == ""
    assert not tracker.accept(reply(r1, "late reply of a closed segment"))


def test_the_final_gets_the_committed_words_only_when_asked() -> None:
    """By default a final is decoded afresh (close gives no words); with final_reuses_committed, after the
    words the interims committed."""
    for options, expected in ((InterimOptions(), ""), (InterimOptions(final_reuses_committed=True), "we")):
        tracker = InterimTracker(options)
        request = ask(tracker, 1, 0.6)
        assert request is not None and tracker.accept(reply(request, "we need", "we"))
        assert tracker.close(1) == expected


def test_tracker_orders_translations_per_language() -> None:
    tracker = InterimTracker(InterimOptions(interval_s=0.5))
    r0, r1 = ask(tracker, 1, 0.6), ask(tracker, 1, 1.2)
    assert r0 is not None and r1 is not None

    def translated(request: InterimRequest, language: str) -> InterimTranslation:
        return InterimTranslation(room="room", speaker="ana", seq=1, revision=request.revision, language=language)

    assert tracker.accept(translated(r1, "es")) and tracker.accept(translated(r0, "ca"))
    assert not tracker.accept(translated(r0, "es"))  # older than the Spanish one shown
    assert tracker.accept(reply(r0, "we"))  # the transcript has its own order
    assert tracker.previous == "we"  # translations leave the agreement state alone
    tracker.close(1)
    assert not tracker.accept(translated(r1, "gl"))


def test_interim_caption_payload() -> None:
    transcript = InterimTranscript(
        room="r", speaker="ana", seq=4, revision=2, language="en", targets=("es",),
        text="we need to find", committed="we need",
    ).stamped("captured", 100.0)  # fmt: skip
    caption = interim_caption(transcript, "Ana")
    assert caption == {
        "type": "caption", "id": "ana:4", "speaker_id": "ana", "speaker": "Ana", "seq": 4, "revision": 2,
        "lang": "en", "text": "we need to find", "committed": "we need", "original": "we need to find",
        "source_lang": "en", "final": False, "note": "", "captured_at": 100.0,
    }  # fmt: skip
    translation = InterimTranslation(
        room="r", speaker="ana", seq=4, revision=2, source_language="en", language="es",
        source_text="we need to find", source_committed="we need", text="necesitamos encontrar",
    )  # fmt: skip
    caption = interim_caption(translation, "Ana")
    assert (caption["lang"], caption["text"], caption["original"], caption["final"]) == (
        "es", "necesitamos encontrar", "we need to find", False,
    )  # fmt: skip


def test_interim_messages_travel_and_never_collide_with_finals() -> None:
    request = InterimRequest(room="r", speaker="s", seq=2, revision=5, language="en", pcm=b"\x01\x00" * 10)
    assert decode(encode(request)) == request
    final = Transcript(room="r", speaker="s", seq=2, language="en", text="final")
    interims = [InterimTranscript(room="r", speaker="s", seq=2, revision=r, language="en") for r in (0, 1)]
    keys = {dedup_key(m, "asr") for m in (final, *interims)}
    assert len(keys) == 3  # an interim never takes the final's identity, nor another revision's
    assert destinations(request) == (ASR_INTERIM,)
    assert destinations(interims[0]) == (MT_INTERIM, RESULTS)


def test_entry_age_reads_the_redis_clock_in_the_id() -> None:
    assert entry_age_s(b"1000-0", now=3.5) == pytest.approx(2.5)


# --- the worker runtime ------------------------------------------------------------------------------------


class RecordingStage:
    """A stage for testing the runtime itself (not a stand-in for an engine): it records what it ran and
    when, takes FINAL_S for a final, answers an interim with its revision as text, and fails on revision 99."""

    kind = MT
    FINAL_S = 0.6

    def __init__(self) -> None:
        self.ran: list[tuple[str, int, int, float, float]] = []  # (kind, seq, revision, start, end)
        self.lock = threading.Lock()

    def load(self) -> None:
        pass

    def process(self, message: Message) -> Sequence[Message]:
        started = time.monotonic()
        if isinstance(message, Transcript):
            time.sleep(self.FINAL_S)
        revision = getattr(message, "revision", -1)
        if revision == 99:
            raise RuntimeError("interim engine hiccup")
        with self.lock:
            self.ran.append((message.kind, message.seq, revision, started, time.monotonic()))
        return []


def interim(seq: int, revision: int) -> InterimTranscript:
    return InterimTranscript(room="r", speaker="s", seq=seq, revision=revision, language="en", text=f"rev {revision}")


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, block_ms=100))
    yield bus
    await bus.close()


async def run_worker(bus: Bus, stage: RecordingStage, until: int, timeout_s: float = 15.0) -> None:
    worker = Worker(stage, bus, WorkerOptions(heartbeat_interval_s=0.2, max_interim_age_s=5.0), consumer="w")
    task = asyncio.create_task(worker.run())
    deadline = time.monotonic() + timeout_s
    try:
        while len(stage.ran) < until and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # anything more it would (wrongly) run
    finally:
        worker.stop()
        await task


async def pending(bus: Bus, stream: str) -> int:
    return int((await bus.client.xpending(bus.stream(stream), MT))["pending"])


async def test_only_the_newest_interim_of_a_segment_runs(bus: Bus) -> None:
    for revision in (0, 1, 2):
        await bus.publish(interim(1, revision))
    await bus.publish(interim(2, 0))  # another segment's job is not superseded by seq 1's
    stage = RecordingStage()
    await run_worker(bus, stage, until=2)
    assert sorted((seq, rev) for _, seq, rev, _, _ in stage.ran) == [(1, 2), (2, 0)]
    assert await pending(bus, MT_INTERIM) == 0  # the superseded ones are acknowledged, not left pending


async def test_interim_never_runs_while_a_final_is_in_flight(bus: Bus) -> None:
    stage = RecordingStage()
    await bus.publish(Transcript(room="r", speaker="s", seq=1, language="en", targets=("es",), text="final"))
    worker = Worker(stage, bus, WorkerOptions(heartbeat_interval_s=0.2), consumer="w")
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)  # the final is running now
        await bus.publish(interim(2, 0))
        deadline = time.monotonic() + 10
        while len(stage.ran) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await task
    (final_kind, _, _, _, final_end), (interim_kind, _, _, interim_start, _) = stage.ran
    assert (final_kind, interim_kind) == ("transcript", "interim_transcript")
    assert interim_start >= final_end


async def test_stale_and_failing_interim_jobs_are_dropped(bus: Bus) -> None:
    await bus.client.xadd(bus.stream(MT_INTERIM), {b"m": encode(interim(1, 0))}, id="1000-0")  # from 1970
    await bus.publish(interim(2, 99))  # fails: dropped, not retried, not dead-lettered
    await bus.publish(interim(3, 0))
    stage = RecordingStage()
    await run_worker(bus, stage, until=1)
    assert [(seq, rev) for _, seq, rev, _, _ in stage.ran] == [(3, 0)]
    assert await pending(bus, MT_INTERIM) == 0
    assert await bus.tail("dead", last_id="0") == []


def test_text_placed_after_the_audio_is_dropped() -> None:
    from workers.engines.asr.whisper_ct2 import heard_tokens

    begin, eot = 1000, 900
    at = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731 - a timestamp token
    tokens = [at(0.0), 1, 2, at(2.0), at(2.0), 3, at(4.0), at(4.4), 4, 5, at(4.9), eot]
    assert heard_tokens(tokens, begin, eot, duration_s=4.5) == [1, 2, 3]  # 4, 5 start 0.1 s before the end
    assert heard_tokens([7, 8, eot], begin, eot, duration_s=1.0) == [7, 8]  # no timestamps: all heard


def test_audio_context_setting() -> None:
    from workers.engines.asr.base import AsrOptions

    assert AsrOptions.from_env({}).audio_context == "fit"  # finals: fitted windows unless asked
    assert AsrOptions.from_env({"BABELROOM_ASR_CONTEXT": "full"}).audio_context == "full"
    with pytest.raises(ValueError, match="'fit' or 'full'"):
        AsrOptions.from_env({"BABELROOM_ASR_CONTEXT": "half"})
    assert (AsrOptions.from_env({}).fit_min_window_s, AsrOptions.from_env({}).beam_size) == (8.0, 5)
    assert AsrOptions().final_pass == "finals over a fitted window of at least 8 s, 5 beams"  # as benchmarks say
    assert AsrOptions(audio_context="full", beam_size=1).final_pass == "finals over the full 30 s window, 1 beam"
    assert AsrOptions.from_env({"BABELROOM_ASR_FIT_MIN_WINDOW_S": "12"}).fit_min_window_s == 12.0
    with pytest.raises(ValueError, match="choose 0 to 28 s"):
        AsrOptions(fit_min_window_s=30.0)
