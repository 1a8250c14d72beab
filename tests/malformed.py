"""Malformed bus entries, for the fuzz tests: every way we know to break a message, and random damage.

`malformed_entries(base, count)` returns `count` (label, bytes) pairs derived from a valid message:
header mutations aimed at each decoder rule (wrong arity of stamps and words, wrong types, NaN,
deep nesting, lone surrogates, missing fields, ...), framing damage (truncation, bad lengths,
trailing bytes, unknown kinds, newer schema), then random bit flips and random bytes. Deterministic
for a given seed, so a failure can be replayed.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable

from pipeline.messages import MAGIC, SCHEMA_VERSION, Message, MessageError, decode, encode

Mutation = Callable[[dict[str, object]], object]

HEADER_MUTATIONS: dict[str, Mutation] = {
    "stamp with 3 items": lambda h: {**h, "stamps": [["captured", 1.0, 2.0]]},
    "stamp with 1 item": lambda h: {**h, "stamps": [["captured"]]},
    "stamp time a string": lambda h: {**h, "stamps": [["captured", "soon"]]},
    "stamp name a number": lambda h: {**h, "stamps": [[7, 1.0]]},
    "stamps not a list": lambda h: {**h, "stamps": "captured"},
    "word with 2 fields": lambda h: {**h, "words": [["hi", 0.1]]},
    "word with 5 fields": lambda h: {**h, "words": [["hi", 0.1, 0.2, 0.9, 1]]},
    "word not a list": lambda h: {**h, "words": [{"text": "hi"}]},
    "seq a string": lambda h: {**h, "seq": "3"},
    "seq a float": lambda h: {**h, "seq": 3.5},
    "seq a bool": lambda h: {**h, "seq": True},
    "seq huge": lambda h: {**h, "seq": 10**400},
    "room a number": lambda h: {**h, "room": 12},
    "room null": lambda h: {**h, "room": None},
    "speaker a list": lambda h: {**h, "speaker": ["a"]},
    "room missing": lambda h: {k: v for k, v in h.items() if k != "room"},
    "seq missing": lambda h: {k: v for k, v in h.items() if k != "seq"},
    "targets a string": lambda h: {**h, "targets": "es"},
    "targets of numbers": lambda h: {**h, "targets": [1, 2]},
    "start_sample a float": lambda h: {**h, "start_sample": 1.5},
    "match_voice a number": lambda h: {**h, "match_voice": 1},
    "header a list": lambda h: list(h.values()),
    "header a string": lambda h: "segment",
    "header null": lambda h: None,
}

RAW_HEADERS: dict[str, Callable[[bytes], bytes]] = {
    "NaN stamp": lambda h: h.replace(b'"stamps":[', b'"stamps":[["captured",NaN],', 1),
    "Infinity stamp": lambda h: h.replace(b'"stamps":[', b'"stamps":[["captured",Infinity],', 1),
    "deeply nested header": lambda h: b'{"room":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested stamps": lambda h: h.replace(b'"stamps":[', b'"stamps":[' + b"[" * 5_000 + b"]" * 5_000 + b",", 1),
    "lone surrogate room": lambda h: h.replace(b'"room":"', b'"room":"\\ud800', 1),
    "lone low surrogate": lambda h: h.replace(b'"speaker":"', b'"speaker":"\\udc00x', 1),
    "invalid utf-8": lambda h: h.replace(b'"room":"', b'"room":"\xff\xfe', 1),
    "truncated json": lambda h: h[: len(h) // 2],
    "empty header": lambda h: b"",
    "not json": lambda h: b"room=r;seq=1",
    "huge number": lambda h: h.replace(b'"seq":', b'"seq":' + b"9" * 5000 + b',"x":', 1),
}


def frame(kind: bytes, header: bytes, blobs: list[bytes], version: int = SCHEMA_VERSION) -> bytes:
    parts = [MAGIC, struct.pack(">H", version), bytes([len(kind)]), kind, struct.pack(">I", len(header)), header]
    for blob in blobs:
        parts += [struct.pack(">I", len(blob)), blob]
    return b"".join(parts)


def split(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(kind, header, blobs) of a valid encoding."""
    kind_len = data[4]
    kind = data[5 : 5 + kind_len]
    offset = 5 + kind_len
    (head_len,) = struct.unpack_from(">I", data, offset)
    header = data[offset + 4 : offset + 4 + head_len]
    offset += 4 + head_len
    blobs = []
    while offset < len(data):
        (n,) = struct.unpack_from(">I", data, offset)
        blobs.append(data[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return kind, header, blobs


def targeted(base: Message) -> list[tuple[str, bytes]]:
    """One entry per rule of the decoder."""
    data = encode(base)
    kind, header, blobs = split(data)
    parsed = json.loads(header)
    out = [
        (label, frame(kind, json.dumps(mutate(parsed)).encode(), blobs)) for label, mutate in HEADER_MUTATIONS.items()
    ]
    out += [(label, frame(kind, damage(header), blobs)) for label, damage in RAW_HEADERS.items()]
    out += [
        ("empty", b""),
        ("bad magic", b"XX" + data[2:]),
        ("magic only", MAGIC),
        ("newer schema", frame(kind, header, blobs, version=SCHEMA_VERSION + 1)),
        ("unknown kind", frame(b"bogus", header, blobs)),
        ("non-ascii kind", frame(b"\xff\xfe", header, blobs)),
        ("kind length past the end", data[:4] + b"\xff" + data[5:9]),
        ("header length past the end", frame(kind, header, blobs)[: 5 + len(kind)] + b"\xff\xff\xff\xff" + header),
        ("missing blob", frame(kind, header, [])),
        ("trailing bytes", data + b"\x00\x01\x02"),
        ("blob length lies", frame(kind, header, []) + struct.pack(">I", 1 << 30) + b"\x00" * 8),
    ]
    return out


def malformed_entries(base: Message, count: int, seed: int = 11) -> list[tuple[str, bytes]]:
    """`count` malformed encodings derived from `base`: the targeted ones, then random damage (kept only
    when it really breaks the message: a flipped bit in a name can leave a valid one)."""
    rng = random.Random(seed)
    data = encode(base)
    entries = [entry for entry in targeted(base) if _undecodable(entry[1])]
    while len(entries) < count:
        entries += [entry for entry in _random_damage(rng, data) if _undecodable(entry[1])]
    return entries[:count]


def _undecodable(data: bytes) -> bool:
    try:
        decode(data)
    except MessageError:
        return True
    return False


def _random_damage(rng: random.Random, data: bytes) -> list[tuple[str, bytes]]:
    entries: list[tuple[str, bytes]] = []
    for _ in range(20):
        choice = rng.randrange(4)
        if choice == 0:
            cut = rng.randrange(1, len(data))
            entries.append((f"truncated at {cut}", data[:cut]))
        elif choice == 1:
            damaged = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                damaged[rng.randrange(min(len(damaged), 5 + 64 + 200))] ^= 1 << rng.randrange(8)
            entries.append(("bit flips in the header", bytes(damaged)))
        elif choice == 2:
            entries.append(("random bytes", rng.randbytes(rng.randrange(1, 300))))
        else:
            kind, header, blobs = split(data)
            mutate = rng.choice(list(HEADER_MUTATIONS.values()))
            mutated = json.dumps(mutate(json.loads(header))).encode()
            entries.append(("random header mutation", frame(kind, mutated, blobs)))
    return entries
