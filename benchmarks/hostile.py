"""The worst inputs we know for each kind of text the gateway parses, made as large as its limits allow: what a
client who wants to stall the gateway sends. Each is aimed at a way parsing goes superlinear: a regular
expression that backtracks (escaped quotes, unterminated strings), recursion (deep nesting, nested comments),
`int()` of long digit strings, unicode normalization of long runs of combining marks, header parsing.

Used by the timing test (tests/test_linear_input.py), the HTTP fuzzing (tests/http_fuzz.py) and the attack
benchmark (benchmarks/attack.py). Deterministic: no randomness.
"""

from __future__ import annotations

import json

# aiohttp's limit on a request line or a header field: longer ones are refused before any handler.
MAX_HEADER_CHARS = 8190


def worst_json(limit: int) -> list[tuple[str, bytes]]:
    """JSON texts (valid or not) of at most `limit` bytes, each the worst of its kind."""
    room = limit - 64  # the few bytes around the payload

    def field(name: str, raw_value: bytes) -> bytes:
        return b'{"' + name.encode() + b'": ' + raw_value + b"}"

    def string_of(unit: bytes) -> bytes:
        return b'"' + unit * (room // len(unit)) + b'"'

    bodies = [
        ("escaped quotes, unterminated", b'"' + b'\\"' * (room // 2)),
        ("escaped quotes in the name", field("name", string_of(b'\\"'))),
        ("escaped quotes in the token", field("token", string_of(b'\\"'))),
        ("escaped quotes, unterminated, in a field", b'{"name": "' + b'\\"' * (room // 2)),
        ("escaped backslashes", field("name", string_of(b"\\\\"))),
        ("brackets in a string", field("name", string_of(b"[{"))),
        ("quote and bracket runs", b"[" + b'"[",' * (room // 4) + b'"["]'),
        ("deep lists, unclosed", b"[" * room),
        ("deep lists, closed", b"[" * (room // 2) + b"]" * (room // 2)),
        ("deep objects", b'{"a":' * (room // 5)),
        ("deep in a field", field("options", b"[" * (room // 2) + b"]" * (room // 2))),
        ("just too deep, many times", b"[" + b",".join([b"[" * 33 + b"]" * 33] * (room // 68)) + b"]"),
        ("long integer", field("speak", b"9" * room)),
        ("long integer, 4300 digits", field("speak", b"9" * 4300)),
        ("long fraction", field("speak", b"0." + b"1" * room)),
        ("long exponent", field("speak", b"1e" + b"9" * room)),
        ("overflowing exponent", field("speak", b"1e999")),
        ("long unicode escapes", field("name", string_of(b"\\u00e9"))),
        ("surrogate pair escapes", field("name", string_of(b"\\ud83d\\ude00"))),
        ("lone surrogate escapes", field("name", string_of(b"\\ud800"))),
        ("combining marks, unsorted", field("name", json.dumps("a" + "\u0301\u0316" * (room // 12)).encode())),
        ("combining marks, reversed", field("name", _combining_reversed(room))),
        ("many keys", b"{" + b",".join(b'"k%d":0' % i for i in range(room // 12)) + b"}"),
        ("one key many times", b"{" + b'"name":0,' * (room // 9) + b'"name":0}'),
        ("many empty lists", field("options", b"[" + b"[]," * (room // 3) + b"[]]")),
        ("many numbers", field("options", b"[" + b"1.5," * (room // 4) + b"1]")),
        ("whitespace", b" " * room + b"{}"),
        ("NUL characters", field("name", string_of(b"\\u0000"))),
    ]
    return [(label, body[:limit]) for label, body in bodies]


def _combining_reversed(room: int) -> bytes:
    """A base letter and marks whose canonical order is the reverse of how they come (NFC's sort is
    quadratic in such a run)."""
    count = room // 2  # two UTF-8 bytes each
    return json.dumps("a" + "\u0301" * (count // 2) + "\u0316" * (count // 2), ensure_ascii=False).encode()


def worst_content_types() -> list[tuple[str, str]]:
    """Content-Type headers at aiohttp's header limit that the email package parses slowly or not at all."""
    n = MAX_HEADER_CHARS - 40
    return [
        ("quotes", 'application/json; a="' + '\\"' * (n // 2)),
        ("runs of quotes", "application/json; " + '"' * n),
        ("semicolons", "application/json" + ";" * n),
        ("quoted pairs", "application/json; x=" + '"a"' * (n // 3)),
        ("nested comments", "application/json; " + "(" * n),
        ("parameters", "application/json; " + "a=b; " * (n // 5)),
        ("continuations", "application/json; " + "x*1*=a;" * (n // 7)),
    ]


def worst_queries() -> list[tuple[str, str]]:
    """Query strings near the request line's limit, for `?ticket=` and `?token=`."""
    n = MAX_HEADER_CHARS - 200
    return [
        ("escaped quotes", "%5C%22" * (n // 6)),
        ("dots", "." * n),
        ("a token of digits", "9" * n),
        ("percent escapes", "%ED%A0%80" * (n // 9)),
        ("many parameters", "x&ticket=" * (n // 9)),
    ]


def worst_websocket_extensions() -> list[tuple[str, str]]:
    """Sec-WebSocket-Extensions offers: aiohttp turns the window bits into an int() of however many digits."""
    n = MAX_HEADER_CHARS - 100
    return [
        ("window bits of many digits", "permessage-deflate; server_max_window_bits=" + "9" * n),
        ("many offers", ", ".join(["permessage-deflate; client_no_context_takeover"] * (n // 48))),
    ]
