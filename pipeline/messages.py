"""The messages that travel between the gateway and the workers.

Every message is a frozen dataclass that names its room, speaker, segment sequence number and
carries `stamps`: (stage, unix time) pairs appended as it moves, so end-to-end and per-stage latency
come from the messages themselves.

Wire format (compact, raw bytes, never base64):

    b"BR" | u16 schema version | u8 kind length | kind (ascii) | u32 header length | header (JSON)
    | for each bytes field: u32 length | raw bytes

Scalar fields go to the JSON header; `bytes` fields (audio, video frames) go after it untouched.
A message written by a newer schema is refused with `SchemaVersionError`, never guessed at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
import types
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_type_hints

SCHEMA_VERSION = 1
MAGIC = b"BR"
SAMPLE_RATE = 16_000  # every speech segment is 16 kHz mono PCM16

Stamps = tuple[tuple[str, float], ...]


class MessageError(ValueError):
    """Bytes that are not a BabelRoom message."""


class SchemaVersionError(MessageError):
    """A message from a schema this build does not understand."""


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float
    probability: float = 1.0


@dataclass(frozen=True)
class Phoneme:
    """One phoneme of synthetic speech: an IPA symbol (length marks kept, stress marks dropped) and
    when it sounds, in seconds from the start of the speech."""

    symbol: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Service:
    """What the gateway asks of the pipeline for one segment, decided by its overload policy when the
    segment is published, and carried on to every message derived from it (the worker runtime copies
    it from input to outputs). Under load, lip-sync goes first, then translated speech; captions stay."""

    speech: bool = True  # translated speech wanted; off: the tts stage returns empty speech at once
    lipsync: bool = True  # lip-synced video wanted
    deadline: float = 0.0  # unix time after which a result is too late to be worth delivering; 0: none


FULL_SERVICE = Service()


@dataclass(frozen=True)
class Message:
    """Fields every message shares. `kind` names the concrete type on the wire."""

    kind: ClassVar[str] = "message"

    room: str
    speaker: str
    seq: int
    stamps: Stamps = ()
    # The media node whose room this is (gateway/rooms/placement.py): its results go to that node's own stream
    # (pipeline.routes.results_stream). Empty: the one `results` stream of a gateway that is not a cluster node.
    node: str = ""

    def stamped(self, stage: str, at: float | None = None) -> Any:
        """A copy with one more (stage, time) stamp."""
        return dataclasses.replace(self, stamps=(*self.stamps, (stage, time.time() if at is None else at)))

    def stamp(self, stage: str) -> float | None:
        return next((t for s, t in reversed(self.stamps) if s == stage), None)

    @property
    def log_context(self) -> str:
        return f"room={self.room} speaker={self.speaker} seq={self.seq}"


@dataclass(frozen=True)
class SpeechSegment(Message):
    """A cut of one speaker's audio, closed at a natural pause."""

    kind: ClassVar[str] = "segment"

    language: str = ""  # what the speaker declared they speak
    targets: tuple[str, ...] = ()  # distinct listening languages to translate into
    start_sample: int = 0  # sample-accurate position in the speaker's 16 kHz stream
    end_sample: int = 0
    pcm: bytes = b""  # 16 kHz mono signed 16-bit little-endian
    match_voice: bool = False  # the speaker opted in to their pitch being matched in the translated voice
    # The gateway stored this segment's video frames (pipeline/frames.py; only with the speaker's consent):
    # the translated speech is lip-synced. Every later message of the segment carries it on.
    has_frames: bool = False
    committed: str = ""  # words its interim captions committed: the final decodes after them, keeping them
    service: Service = FULL_SERVICE

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE


@dataclass(frozen=True)
class Transcript(Message):
    kind: ClassVar[str] = "transcript"

    language: str = ""
    targets: tuple[str, ...] = ()
    text: str = ""
    words: tuple[Word, ...] = ()
    start_sample: int = 0
    end_sample: int = 0
    speaker_f0_hz: float = 0.0  # median pitch of the speaker, 0 when unknown or not consented
    has_frames: bool = False
    service: Service = FULL_SERVICE


@dataclass(frozen=True)
class Translation(Message):
    kind: ClassVar[str] = "translation"

    source_language: str = ""
    language: str = ""  # the target language of this translation
    source_text: str = ""
    text: str = ""
    note: str = ""  # shown beside the caption, e.g. "no en->de translation available"
    start_sample: int = 0
    end_sample: int = 0
    speaker_f0_hz: float = 0.0
    has_frames: bool = False
    service: Service = FULL_SERVICE


@dataclass(frozen=True)
class SynthesizedSpeech(Message):
    kind: ClassVar[str] = "speech"

    language: str = ""
    text: str = ""
    source_text: str = ""
    sample_rate: int = SAMPLE_RATE
    pcm: bytes = b""  # mono signed 16-bit little-endian at sample_rate
    words: tuple[Word, ...] = ()  # word timings in the synthetic audio, when the engine knows them
    start_sample: int = 0
    end_sample: int = 0
    phonemes: tuple[Phoneme, ...] = ()  # phoneme timings in `pcm`, when the engine knows them (lip-sync)
    has_frames: bool = False  # also routed to the lipsync stage (pipeline.routes)


@dataclass(frozen=True)
class VideoClip(Message):
    """Video frames of one segment, JPEG-compressed (pipeline/frames.py packs and bounds them): the
    speaker's own frames as the gateway stored them (`language` empty, times from the segment's start),
    or lip-synced to the translated speech (`language` set, times from the speech's start)."""

    kind: ClassVar[str] = "video"

    language: str = ""
    width: int = 0
    height: int = 0
    frames: bytes = b""  # pipeline.frames.pack_jpegs: a u32 count, then a u32 length and a JPEG per frame
    timestamps_s: tuple[float, ...] = ()  # one per frame
    engine: str = ""  # the lip-syncer that made it; empty for the speaker's own frames


@dataclass(frozen=True)
class InterimRequest(Message):
    """The open segment's audio so far, sent every INTERIM_INTERVAL_S while the floor holder speaks.

    `seq` is the one its final SpeechSegment will carry, so the final caption replaces the interim ones;
    `revision` counts the requests of one segment. `previous` (the last hypothesis the sender received
    for this segment) and `committed` (the words already agreed on) carry the LocalAgreement state, so
    any ASR worker can serve any request."""

    kind: ClassVar[str] = "interim_request"

    revision: int = 0
    language: str = ""
    targets: tuple[str, ...] = ()
    start_sample: int = 0
    end_sample: int = 0
    pcm: bytes = b""
    previous: str = ""
    committed: str = ""

    @property
    def log_context(self) -> str:
        return f"{super().log_context} revision={self.revision}"


@dataclass(frozen=True)
class InterimTranscript(Message):
    """What the speaker has said so far: `committed` is the stable start of `text` (never withdrawn by a
    later interim), the rest of `text` may still change."""

    kind: ClassVar[str] = "interim_transcript"

    revision: int = 0
    language: str = ""
    targets: tuple[str, ...] = ()
    text: str = ""
    committed: str = ""
    end_sample: int = 0  # how far into the speaker's timeline this hypothesis heard


@dataclass(frozen=True)
class InterimTranslation(Message):
    kind: ClassVar[str] = "interim_translation"

    revision: int = 0
    source_language: str = ""
    language: str = ""
    source_text: str = ""
    source_committed: str = ""
    text: str = ""
    note: str = ""


@dataclass(frozen=True)
class WarmUp(Message):
    """The language pairs a room will need, sent by the gateway when someone joins, before anyone speaks:
    an engine that starts each pair separately (an Apertium pipeline: 1-6 s) starts them now rather than on
    the room's first interim caption. A hint: the mt stage acts on it in the background and emits nothing."""

    kind: ClassVar[str] = "warm_up"

    pairs: tuple[tuple[str, str], ...] = ()  # (source, target) language codes


@dataclass(frozen=True)
class ControlEvent(Message):
    """Floor control and cancellation: `action` is e.g. "request", "grant", "release", "cancel"."""

    kind: ClassVar[str] = "control"

    action: str = ""
    detail: str = ""


@dataclass(frozen=True)
class StageFailure(Message):
    """What the dead-letter stream holds: the stage, the error, and the original bytes untouched."""

    kind: ClassVar[str] = "failure"

    stage: str = ""
    error: str = ""
    attempts: int = 0
    original: bytes = b""


@dataclass(frozen=True)
class Dropped(Message):
    """Work a stage gave up on purpose instead of delivering it late: the gateway stops waiting for the
    segment's results in `languages`, and counts it."""

    kind: ClassVar[str] = "dropped"

    stage: str = ""
    reason: str = ""  # e.g. "late": it could not finish before its service deadline
    languages: tuple[str, ...] = ()


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (
        SpeechSegment,
        Transcript,
        Translation,
        SynthesizedSpeech,
        VideoClip,
        ControlEvent,
        StageFailure,
        InterimRequest,
        InterimTranscript,
        InterimTranslation,
        Dropped,
        WarmUp,
    )
}
INTERIM_TYPES = (InterimRequest, InterimTranscript, InterimTranslation)

M = TypeVar("M", bound=Message)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def encode(message: Message) -> bytes:
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            blobs.append(value)
        else:
            header[f.name] = _to_json(value)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    kind = message.kind.encode("ascii")
    parts = [MAGIC, _U16.pack(SCHEMA_VERSION), bytes([len(kind)]), kind, _U32.pack(len(head)), head]
    for blob in blobs:
        parts += [_U32.pack(len(blob)), blob]
    return b"".join(parts)


def decode(data: bytes) -> Message:
    """Parse bytes written by `encode`. Any failure (truncation, bad JSON, wrong field types or arity,
    nesting too deep, lone surrogates, ...) raises MessageError, or SchemaVersionError for a newer schema:
    a consumer never meets any other exception, so one bad entry cannot crash a stage."""
    try:
        return _decode(memoryview(data))
    except MessageError:
        raise
    except Exception as exc:  # whatever the bytes provoke, it is the same verdict: not a message
        raise MessageError(f"malformed message: {type(exc).__name__}: {exc}") from exc


def _decode(view: memoryview) -> Message:
    if bytes(view[:2]) != MAGIC:
        raise MessageError("not a BabelRoom message (bad magic)")
    (version,) = _U16.unpack_from(view, 2)
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"message schema version {version} is not supported by this build "
            f"(speaks version {SCHEMA_VERSION}); upgrade the worker or the sender"
        )
    kind_len = view[4]
    kind = bytes(view[5 : 5 + kind_len]).decode("ascii")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"unknown message kind {kind!r}")
    offset = 5 + kind_len
    (head_len,) = _U32.unpack_from(view, offset)
    offset += 4
    header = json.loads(bytes(view[offset : offset + head_len]), parse_constant=_refuse_constant)
    if not isinstance(header, dict):
        raise MessageError(f"{kind}: the header is not a JSON object")
    offset += head_len
    values: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] is bytes:
            (blob_len,) = _U32.unpack_from(view, offset)
            offset += 4
            if offset + blob_len > len(view):
                raise MessageError(f"{kind}: field {f.name} is truncated")
            values[f.name] = bytes(view[offset : offset + blob_len])
            offset += blob_len
        elif f.name in header:
            values[f.name] = _from_json(hints[f.name], header[f.name], f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{kind}: required field {f.name} is missing")
    if offset != len(view):
        raise MessageError(f"{kind}: {len(view) - offset} unexpected byte(s) after the last field")
    return cls(**values)


def decode_as(data: bytes, expected: type[M]) -> M:
    message = decode(data)
    if not isinstance(message, expected):
        raise MessageError(f"expected a {expected.kind} message, got {message.kind}")
    return message


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_to_json(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _refuse_constant(name: str) -> float:
    raise MessageError(f"{name} is not a number a message may carry")


def _from_json(hint: Any, value: Any, name: str) -> Any:
    """Check a JSON value against its field's type and rebuild what JSON flattened (tuples, nested
    dataclasses). Strings must be encodable (no lone surrogates), numbers finite, bool is not an int."""
    if hint is str:
        if not isinstance(value, str):
            raise MessageError(f"field {name}: expected a string, got {type(value).__name__}")
        value.encode("utf-8")  # a lone surrogate could never be encoded again downstream
        return value
    if hint is bool or hint is int:
        if type(value) is not hint:
            raise MessageError(f"field {name}: expected {hint.__name__}, got {type(value).__name__}")
        if hint is int and not -(2**63) <= value < 2**63:
            raise MessageError(f"field {name}: integer outside 64 bits")
        return value
    if hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise MessageError(f"field {name}: expected a finite number, got {value!r}"[:200])
        return float(value)
    if isinstance(hint, types.UnionType):  # e.g. `str | None`
        if value is None and type(None) in hint.__args__:
            return None
        return _from_json(next(a for a in hint.__args__ if a is not type(None)), value, name)
    if not isinstance(value, list):
        raise MessageError(f"field {name}: expected a list, got {type(value).__name__}")
    if getattr(hint, "__origin__", None) is tuple:
        args = hint.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v, name) for v in value)
        _check_arity(name, len(args), value)
        return tuple(_from_json(a, v, name) for a, v in zip(args, value, strict=True))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        inner, fields = _hints(hint), dataclasses.fields(hint)
        _check_arity(name, len(fields), value)
        return hint(*(_from_json(inner[f.name], v, f"{name}.{f.name}") for f, v in zip(fields, value, strict=True)))
    raise MessageError(f"field {name}: unsupported field type {hint!r}")


def _check_arity(name: str, expected: int, value: list[Any]) -> None:
    if len(value) != expected:
        raise MessageError(f"field {name}: expected {expected} items, got {len(value)}")


def dedup_key(message: Message, stage: str) -> str:
    """Identity of one stage's output for one segment: a redelivered input yields the same key."""
    language = getattr(message, "language", "")
    key = f"{stage}:{message.room}:{message.speaker}:{message.seq}:{language}"
    # Interim outputs share seq and language with the final; their kind and revision tell them apart.
    return f"{key}:{message.kind}:{message.revision}" if isinstance(message, INTERIM_TYPES) else key


def latency_s(message: Message, since: str, until: str) -> float | None:
    start, end = message.stamp(since), message.stamp(until)
    return None if start is None or end is None else end - start
