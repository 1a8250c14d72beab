"""Fuzz the bus: 200 malformed entries on every stream a process reads (asr, mt, tts, lipsync: the real
workers; results: the gateway), plus valid messages of the wrong kind. Nothing crashes, every bad entry is
dead-lettered once with its reason, and the service still translates afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from pipeline.audio import float_to_pcm16
from pipeline.bus import FIELD, Bus
from pipeline.messages import (
    ControlEvent,
    Message,
    SpeechSegment,
    StageFailure,
    SynthesizedSpeech,
    Transcript,
    Translation,
    encode,
)
from tests.browser import get_json
from tests.malformed import malformed_entries
from tests.speech import espeak, silence

ENTRIES_PER_STREAM = 200
IDENTITY = {"room": "fuzz", "speaker": "ana", "seq": 1, "stamps": (("captured", 1.0),)}
# What each stream's reader expects (the base the malformed entries are derived from), and who reads it.
STREAMS: dict[str, tuple[Message, str]] = {
    "asr": (SpeechSegment(**IDENTITY, language="en", targets=("es",), end_sample=2, pcm=b"\x00" * 4), "asr"),
    "mt": (Transcript(**IDENTITY, language="en", targets=("es",), text="hello"), "mt"),
    "tts": (Translation(**IDENTITY, source_language="en", language="es", text="hola"), "tts"),
    "lipsync": (SynthesizedSpeech(**IDENTITY, language="es", text="hola", pcm=b"\x00\x00"), "lipsync"),
    "results": (SynthesizedSpeech(**IDENTITY, language="es", text="hola", pcm=b"\x00\x00"), "gateway"),
}
WRONG_KINDS: dict[str, list[Message]] = {
    "asr": [Transcript(**IDENTITY), ControlEvent(**IDENTITY, action="grant")],
    "mt": [SpeechSegment(**IDENTITY), StageFailure(**IDENTITY)],
    "tts": [Transcript(**IDENTITY), SynthesizedSpeech(**IDENTITY)],
    "lipsync": [Transcript(**IDENTITY), Translation(**IDENTITY)],
    "results": [SpeechSegment(**IDENTITY), StageFailure(**IDENTITY)],
}


async def dead_by_stage(bus: Bus) -> Counter[str]:
    found = await bus.tail("dead", "0-0", count=100_000)
    return Counter(d.message.stage for d in found if isinstance(d.message, StageFailure))


async def translated(bus: Bus, seq: int, timeout_s: float) -> tuple[Translation, SynthesizedSpeech]:
    deadline = time.monotonic() + timeout_s
    translation = speech = None
    while time.monotonic() < deadline and not (translation and speech):
        for delivery in await bus.tail("results", "0-0", count=10_000):
            message = delivery.message
            if message is not None and message.room == "after" and message.seq == seq:
                translation = message if isinstance(message, Translation) else translation
                speech = message if isinstance(message, SynthesizedSpeech) else speech
        await asyncio.sleep(0.2)
    assert translation and speech, "the service no longer translates"
    return translation, speech


@pytest.mark.slow
async def test_malformed_entries_on_every_stream_are_dead_lettered_and_the_service_still_translates(
    service: str, bus: Bus
) -> None:
    expected: Counter[str] = Counter()
    for stream, (base, reader) in STREAMS.items():
        entries = [data for _, data in malformed_entries(base, ENTRIES_PER_STREAM)]
        entries += [encode(message) for message in WRONG_KINDS[stream]]
        for data in entries:
            await bus.client.xadd(bus.stream(stream), {FIELD: data})
        expected[reader] += len(entries)
    started = time.monotonic()
    while await dead_by_stage(bus) != expected and time.monotonic() - started < 60:
        await asyncio.sleep(0.2)
    dead = await dead_by_stage(bus)
    print(f"dead-lettered per stage: {dict(dead)} in {time.monotonic() - started:.1f} s")
    assert dead == expected

    status, health = get_json(f"{service}/healthz")
    assert status == 200 and health["workers"] == {"asr": 1, "mt": 1, "tts": 1, "lipsync": 1}, health
    assert all(task["restarts"] == 0 for task in health["tasks"].values()), health

    speech = float_to_pcm16([*silence(0.2), *espeak("the house is big"), *silence(0.2)])
    segment = SpeechSegment(room="after", speaker="ana", seq=5, language="en", targets=("es",),
                            end_sample=len(speech) // 2, pcm=speech).stamped("captured")  # fmt: skip
    await bus.publish(segment)
    translation, voiced = await translated(bus, 5, timeout_s=60)
    assert "casa" in translation.text.lower() and len(voiced.pcm) > 16_000
