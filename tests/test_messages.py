from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest

from pipeline.messages import (
    MESSAGE_TYPES,
    ControlEvent,
    Dropped,
    InterimRequest,
    InterimTranscript,
    InterimTranslation,
    Message,
    MessageError,
    Phoneme,
    SchemaVersionError,
    Service,
    SpeechSegment,
    StageFailure,
    SynthesizedSpeech,
    Transcript,
    Translation,
    VideoClip,
    WarmUp,
    Word,
    decode,
    decode_as,
    dedup_key,
    encode,
    latency_s,
)
from pipeline.routes import LIPSYNC, RESULTS, destinations
from tests.malformed import targeted

PCM = bytes(range(256)) * 40

EXAMPLES = [
    SpeechSegment(
        room="r",
        speaker="ana",
        seq=3,
        language="en",
        targets=("es", "ca"),
        start_sample=160,
        end_sample=160 + len(PCM) // 2,
        match_voice=True,
        has_frames=True,
        pcm=PCM,
        stamps=(("captured", 1.5), ("segmented", 2.0)),
    ),
    Transcript(
        room="r",
        speaker="ana",
        seq=3,
        language="en",
        text="hello there",
        targets=("es",),
        words=(Word("hello", 0.0, 0.4, 0.9), Word("there", 0.5, 0.9, 0.8)),
        speaker_f0_hz=180.5,
        service=Service(speech=False, lipsync=False, deadline=1234.5),
    ),
    Translation(
        room="r",
        speaker="ana",
        seq=3,
        source_language="en",
        language="es",
        source_text="hello",
        text="hola ñandú",
        note="",
    ),
    SynthesizedSpeech(
        room="r",
        speaker="ana",
        seq=3,
        language="es",
        text="hola",
        sample_rate=22050,
        pcm=PCM,
        phonemes=(Phoneme("o", 0.0, 0.1), Phoneme("l", 0.1, 0.15), Phoneme("a", 0.15, 0.3)),
        has_frames=True,
    ),
    VideoClip(
        room="r",
        speaker="ana",
        seq=3,
        language="es",
        width=4,
        height=2,
        frames=b"\x00" * 48,
        timestamps_s=(0.0, 0.04),
        engine="mouthwarp",
    ),
    ControlEvent(room="r", speaker="ana", seq=0, action="grant"),
    StageFailure(room="r", speaker="ana", seq=3, stage="asr", error="boom", attempts=3, original=b"\x01\x02"),
    InterimRequest(
        room="r",
        speaker="ana",
        seq=4,
        revision=2,
        language="en",
        targets=("es",),
        start_sample=160,
        end_sample=160 + len(PCM) // 2,
        pcm=PCM,
        previous="hello the",
        committed="hello",
    ),
    InterimTranscript(
        room="r",
        speaker="ana",
        seq=4,
        revision=2,
        language="en",
        targets=("es",),
        text="hello there",
        committed="hello",
        end_sample=8000,
    ),
    InterimTranslation(
        room="r",
        speaker="ana",
        seq=4,
        revision=2,
        source_language="en",
        language="es",
        source_text="hello there",
        source_committed="hello",
        text="hola allí",
        note="",
    ),
    Dropped(room="r", speaker="ana", seq=3, stage="asr", reason="late", languages=("es", "ca")),
    WarmUp(room="r", speaker="ana", seq=0, pairs=(("en", "ca"), ("es", "ca"))),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_round_trip_keeps_every_field(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


def test_every_message_type_has_an_example() -> None:
    assert {m.kind for m in EXAMPLES} == set(MESSAGE_TYPES)


def test_audio_travels_as_raw_bytes_not_base64() -> None:
    data = encode(EXAMPLES[0])
    assert PCM in data
    assert len(data) < len(PCM) + 400


def test_newer_schema_version_is_a_clear_error() -> None:
    data = bytearray(encode(EXAMPLES[0]))
    struct.pack_into(">H", data, 2, 99)
    with pytest.raises(SchemaVersionError, match="schema version 99 is not supported"):
        decode(bytes(data))


@pytest.mark.parametrize(
    "data", [b"", b"XX\x00\x01", encode(EXAMPLES[0])[:-10], b"BR\x00\x01\x05nope!\x00\x00\x00\x02{}"]
)
def test_malformed_bytes_raise_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode(data)


def test_decode_as_checks_the_kind() -> None:
    with pytest.raises(MessageError, match="expected a transcript"):
        decode_as(encode(EXAMPLES[0]), Transcript)


def test_stamps_give_latency() -> None:
    segment = EXAMPLES[0].stamped("asr", at=2.75)
    assert latency_s(segment, "captured", "asr") == pytest.approx(1.25)
    assert latency_s(segment, "captured", "tts") is None


def test_speech_with_frames_is_also_lip_synced_but_never_waits_for_it() -> None:
    speech = EXAMPLES[3]
    assert isinstance(speech, SynthesizedSpeech)
    assert destinations(speech) == (RESULTS, LIPSYNC)
    assert destinations(replace(speech, has_frames=False)) == (RESULTS,)
    assert destinations(replace(speech, pcm=b"")) == (RESULTS,)  # nothing voiced: nothing to lip-sync
    assert destinations(EXAMPLES[4]) == (RESULTS,)


def test_dedup_key_separates_languages_and_stages() -> None:
    es, ca = EXAMPLES[2], Translation(room="r", speaker="ana", seq=3, language="ca")
    assert dedup_key(es, "mt") != dedup_key(ca, "mt")
    assert dedup_key(es, "mt") != dedup_key(es, "tts")
    assert dedup_key(es, "mt") == dedup_key(Translation(room="r", speaker="ana", seq=3, language="es"), "mt")


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("stamp with 3 items", "expected 2 items"),
        ("word with 2 fields", "expected 4 items"),
        ("deeply nested header", "RecursionError"),
        ("NaN stamp", "NaN is not a number"),
        ("lone surrogate room", "surrogate"),
        ("seq a bool", "expected int"),
        ("seq huge", "64 bits"),
        ("room missing", "required field room"),
        ("header a list", "not a JSON object"),
        ("trailing bytes", "unexpected byte"),
    ],
)
def test_each_decoder_rule_gives_a_message_error(label: str, reason: str) -> None:
    entries = dict(targeted(EXAMPLES[1]))  # a transcript: it has stamps, words and targets
    with pytest.raises(MessageError, match=reason):
        decode(entries[label])


def test_a_blob_longer_than_the_entry_is_refused() -> None:
    with pytest.raises(MessageError, match="truncated"):
        decode(dict(targeted(EXAMPLES[0]))["blob length lies"])


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_fuzzed_bytes_give_a_message_or_a_message_error_never_a_crash(message: Message) -> None:
    """Every targeted mutation and 300 random ones: decode never raises anything but MessageError."""
    rng = random.Random(message.kind)
    data = encode(message)
    candidates = [entry for _, entry in targeted(message)]
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        candidates.append(bytes(damaged[: rng.randrange(1, len(damaged) + 1)]))
    refused = 0
    for entry in candidates:
        try:
            decoded = decode(entry)
        except MessageError:
            refused += 1
            continue
        assert isinstance(decoded, Message)
        assert decode(encode(decoded)) == decoded  # anything accepted survives re-encoding
    assert refused > len(candidates) // 2
