"""The worker's batch path against a real redis-server, and the torch engines' batches on tiny random models.

Worker: with BABELROOM_BATCH_SIZE > 1 a batch-capable stage gets the ready messages of any rooms as one batch;
each message is still settled alone (emitted once and acknowledged, dead-lettered, or retried), and messages
taken over from a dead worker run alone. The stage below is a minimal one for testing the runtime itself (not a
stand-in for an engine).

Engines: a batch gives every row what it would have got alone (Whisper's tokens, NLLB's tokens, VITS' samples
with its noise off), and a bad row fails alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from benchmarks import models
from pipeline.bus import FIELD, Bus
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import Message, SpeechSegment, StageFailure, SynthesizedSpeech, Transcript, Translation
from tests.speech import espeak, silence
from workers.base import Worker
from workers.stage import Outcome, PermanentError, batched

FAST = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, message_timeout_s=10, batch_size=4)


class CountingBatchStage:
    """SpeechSegment -> Transcript naming its length. Records each call's size; seq 13 is a permanent failure;
    with `batches_fail`, every batch of more than one message raises (single messages succeed)."""

    kind = "asr"

    def __init__(self, batches_fail: bool = False) -> None:
        self.batches_fail = batches_fail
        self.calls: list[int] = []

    def load(self) -> None:
        pass

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        self.calls.append(len(messages))
        if self.batches_fail and len(messages) > 1:
            raise RuntimeError("the whole batch ran out of memory")
        return batched(messages, self._checked, lambda ms: [self._transcribe(m) for m in ms])

    def process(self, message: Message) -> Sequence[Message]:
        self.calls.append(1)
        return self._transcribe(self._checked(message))

    @staticmethod
    def _checked(message: Message) -> SpeechSegment:
        assert isinstance(message, SpeechSegment)
        if message.seq == 13:
            raise PermanentError("unlucky segment")
        return message

    @staticmethod
    def _transcribe(message: SpeechSegment) -> Sequence[Message]:
        return [Transcript(room=message.room, speaker=message.speaker, seq=message.seq, text=f"{len(message.pcm)}")]


def segment(room: int, seq: int = 0) -> SpeechSegment:
    return SpeechSegment(
        room=f"room{room}", speaker="ana", seq=seq, language="en", targets=("es",), end_sample=400, pcm=b"\1\0" * 400
    )


@pytest.fixture
async def bus(redis_url: str, stream_prefix: str) -> AsyncIterator[Bus]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix, claim_idle_ms=500, block_ms=100))
    await bus.ensure_group("asr", "asr")
    yield bus
    await bus.close()


async def serve_until(bus: Bus, stage: CountingBatchStage, options: WorkerOptions, stream: str, count: int) -> None:
    worker = Worker(stage, bus, options, consumer="batcher")
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(200):
            if len(await bus.tail(stream, last_id="0", count=100)) >= count:
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task


async def test_ready_messages_of_several_rooms_run_as_one_batch_and_each_is_settled(bus: Bus) -> None:
    for room in range(6):
        await bus.publish(segment(room))
    stage = CountingBatchStage()
    await serve_until(bus, stage, FAST, "mt", 6)
    assert stage.calls == [4, 2]  # up to B ready messages at a time
    out = [d.message for d in await bus.tail("mt", last_id="0", count=100)]
    assert sorted(m.room for m in out if m) == [f"room{r}" for r in range(6)]  # each emitted once
    assert (await bus.client.xpending(bus.stream("asr"), "asr"))["pending"] == 0  # and acknowledged


async def test_a_message_that_fails_alone_is_dead_lettered_and_the_rest_of_its_batch_goes_on(bus: Bus) -> None:
    await bus.publish(segment(0))
    await bus.publish(segment(1, seq=13))
    await bus.client.xadd(bus.stream("asr"), {FIELD: b"not a message"})
    await bus.publish(segment(2))
    await serve_until(bus, CountingBatchStage(), FAST, "dead", 2)
    dead = [d.message for d in await bus.tail("dead", last_id="0", count=100)]
    assert all(isinstance(m, StageFailure) for m in dead) and len(dead) == 2
    assert {m.error.split(":")[0] for m in dead if isinstance(m, StageFailure)} == {
        "unlucky segment",
        "undecodable message",
    }
    assert sorted(d.message.room for d in await bus.tail("mt", last_id="0") if d.message) == ["room0", "room2"]


async def test_a_failed_batch_is_retried_one_message_at_a_time(bus: Bus) -> None:
    for room in range(3):
        await bus.publish(segment(room))
    stage = CountingBatchStage(batches_fail=True)
    await serve_until(bus, stage, FAST, "mt", 3)
    assert stage.calls[0] == 3 and stage.calls[1:] == [1, 1, 1]  # taken over after the failure: each alone
    assert len(await bus.tail("mt", last_id="0")) == 3 and await bus.tail("dead", last_id="0") == []


async def test_batch_size_one_keeps_the_single_message_path(bus: Bus) -> None:
    for room in range(3):
        await bus.publish(segment(room))
    stage = CountingBatchStage()
    await serve_until(bus, stage, dataclasses.replace(FAST, batch_size=1), "mt", 3)
    assert stage.calls == [1, 1, 1]


def test_batch_size_is_read_and_checked() -> None:
    assert WorkerOptions.from_env({"BABELROOM_BATCH_SIZE": "8"}).batch_size == 8
    assert WorkerOptions.from_env({}).batch_size == 1
    with pytest.raises(ValueError, match="BABELROOM_BATCH_SIZE"):
        WorkerOptions.from_env({"BABELROOM_BATCH_SIZE": "0"})


# --- the torch engines' batches --------------------------------------------------------------------------

pytest_slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> models.ModelSet:
    return models.model_set(tmp_path_factory.mktemp("models"), ("es", "fr"), tiny=True)


@pytest_slow
def test_whisper_batch_decodes_each_row_as_it_would_alone(tiny_models: models.ModelSet) -> None:
    from workers.asr import AsrStage
    from workers.engines.asr.base import AsrOptions
    from workers.engines.asr.whisper_torch import TransformersWhisperRecognizer

    engine = TransformersWhisperRecognizer(AsrOptions(engine="transformers", model=str(tiny_models.asr), device="cpu"))
    assert engine.max_new_tokens == models.ASR_DECODE_TOKENS  # the checkpoint's own cap
    # Long enough that the random model's words are not too many for the speech (the guard's speaking-rate check).
    clips = [espeak("Good morning everyone, thank you for joining the meeting today.", "en"), espeak("Hola.", "es")]
    together = engine.decode(clips, ["en", "es"])
    alone = [engine.decode([clip], [language])[0] for clip, language in zip(clips, ["en", "es"], strict=True)]
    assert [d.text for d in together] == [d.text for d in alone] and all(d.text for d in together)
    assert [d.language for d in together] == ["en", "es"]
    np.testing.assert_allclose([d.avg_logprob for d in together], [d.avg_logprob for d in alone], atol=1e-4)

    stage = AsrStage(recognizer=engine)
    quiet = dataclasses.replace(segment(1), pcm=(silence(1.0) * 0).astype(np.int16).tobytes(), end_sample=16000)
    pcm = (clips[0] * 32767).astype(np.int16).tobytes()
    speech = dataclasses.replace(segment(0), pcm=pcm, end_sample=clips[0].size)
    wrong = dataclasses.replace(segment(2), language="xx", pcm=speech.pcm)
    spoken, silent, unknown = stage.process_batch([speech, quiet, wrong])
    assert isinstance(spoken, list) and isinstance(spoken[0], Transcript) and spoken[0].text == together[0].text
    assert isinstance(silent, list) and isinstance(silent[0], Transcript) and silent[0].text == ""  # no decoding
    assert isinstance(unknown, PermanentError)  # fails alone


@pytest_slow
def test_nllb_batch_of_two_source_languages_matches_one_at_a_time(tiny_models: models.ModelSet) -> None:
    from workers.engines.mt.base import MtOptions, Request
    from workers.engines.mt.transformers import TransformersTranslator

    nllb = TransformersTranslator(MtOptions(engine="transformers", model=str(tiny_models.mt), device="cpu"))
    requests = [Request("hello world", "en", ("es", "fr")), Request("bonjour le monde", "fr", ("en",))]
    together = nllb.translate_batch(requests)
    alone = [nllb.translate(r.text, r.source, r.targets) for r in requests]
    assert together == alone
    assert [list(r) for r in together] == [["es", "fr"], ["en"]]
    words = together[0]["es"].text.split()
    assert words and len("".join(words)) >= models.MT_DECODE_TOKENS  # the forced length: every piece has letters


@pytest_slow
def test_vits_batch_groups_by_length_and_matches_one_at_a_time(tiny_models: models.ModelSet) -> None:
    from workers.engines.tts.base import TtsOptions
    from workers.engines.tts.vits import LENGTH_GROUP_RATIO, VitsSynthesizer, length_groups
    from workers.tts import TtsStage

    voice = VitsSynthesizer(str(tiny_models.voices["es"]), "es", device="cpu")
    voice.model.noise_scale = voice.model.noise_scale_duration = 0.0  # deterministic: comparable samples
    texts = ["hola", "hola mundo", "hola mundo hola mundo hola mundo", "123"]
    together = voice.synthesize_batch(texts, "es")
    alone = [voice.synthesize(text, "es") for text in texts]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.samples, b.samples, atol=1e-4)
    assert together[3].samples.size == 0 and together[2].duration_s > together[0].duration_s
    assert length_groups([0, 1, 2], [10, 14, 30]) == [[0, 1], [2]] and LENGTH_GROUP_RATIO == 1.5

    stage = TtsStage(TtsOptions(voices=f"es=vits:{tiny_models.voices['es']}", device="cpu"))
    base = Translation(room="r", speaker="s", seq=0, language="es", text="hola mundo", end_sample=16000)
    untranslated = dataclasses.replace(base, note="no pair", source_text="hola mundo")
    outcomes = stage.process_batch([base, untranslated, dataclasses.replace(base, language="xx")])
    spoken, empty, unknown = outcomes
    assert isinstance(spoken, list) and isinstance(spoken[0], SynthesizedSpeech) and spoken[0].pcm
    assert isinstance(empty, list) and isinstance(empty[0], SynthesizedSpeech) and not empty[0].pcm
    assert isinstance(unknown, PermanentError)


def test_model_dirs_are_built_once(tmp_path: Path) -> None:
    first = models.mms_tts(tmp_path / "voice", models.MMS_TTS_TINY)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert models.mms_tts(tmp_path / "voice", models.MMS_TTS_TINY) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
