"""Strict checks of what HTTP clients send: room and display names, and JSON bodies. Small pure functions
so every endpoint uses the same rules; each raises InvalidInput with a message fit for a 400 body.

- Room names: letters, digits, '-' and '_', matched against the whole string (a `$` anchor would let
  "demo\\n" through as a room of its own).
- Display names: NFC-normalized, printable, no lone surrogates, no bidirectional controls (a name
  must not reorder the text around it on other people's screens).
- JSON bodies: UTF-8 only, no Content-Encoding (both checked before reading), nesting at most
  MAX_JSON_DEPTH deep (Python's parser would recurse until RecursionError), strict JSON (no NaN or
  Infinity), and an object at the top.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from gateway.options import MAX_NAME_CHARS

ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ROOM_NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit"
# Deeper than any body of ours needs (the join body is 2 levels), far below the parser's recursion limit.
MAX_JSON_DEPTH = 32
# Format characters a name may hold: joiners that some scripts and emoji sequences need. Every other
# format character (bidi embeddings, overrides and isolates among them) is refused.
ALLOWED_FORMAT_CHARS = frozenset("\u200c\u200d")
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class InvalidInput(ValueError):
    """Input refused; the message says why, for the 4xx body. `status` is 400 unless said otherwise."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def room_name(name: str) -> str:
    if not ROOM_NAME.fullmatch(name):
        raise InvalidInput(f"invalid room name: use {ROOM_NAME_RULE}")
    return name


def display_name(raw: object) -> str:
    name = unicodedata.normalize("NFC", raw.strip()) if isinstance(raw, str) and _encodable(raw) else ""
    rule = f"a display name of 1-{MAX_NAME_CHARS} printable characters is required"
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(rule)
    if any(c in BIDI_CONTROLS for c in name):
        raise InvalidInput(f"{rule}: bidirectional control characters are not allowed")
    if not all(c.isprintable() or c in ALLOWED_FORMAT_CHARS for c in name):
        raise InvalidInput(rule)
    return name


def plain_body(content_encoding: str, charset: str | None) -> None:
    """Check the headers before the body is read: uncompressed, and UTF-8 if a charset is named."""
    if content_encoding.strip().lower() not in ("", "identity"):
        raise InvalidInput(f"Content-Encoding {content_encoding!r} is not accepted: send plain JSON", 415)
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise InvalidInput(f"charset {charset!r} is not accepted: send JSON as UTF-8", 415)


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InvalidInput(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, and our refusal of NaN and Infinity
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape
        return False
    return True
