"""Strict checks of what HTTP clients send: room and display names, and JSON bodies. Small pure functions
so every endpoint uses the same rules; each raises InvalidInput with a message fit for a 400 body.

- Room names: letters, digits, '-' and '_', matched against the whole string (a `$` anchor would let
  "demo\\n" through as a room of its own).
- Display names: NFC-normalized, printable, no lone surrogates, no bidirectional controls (a name
  must not reorder the text around it on other people's screens).
- JSON bodies: UTF-8 only, no Content-Encoding (both checked before reading), at most MAX_JSON_CONTAINERS
  lists and objects nested at most MAX_JSON_DEPTH deep, strict JSON (no NaN, Infinity or numbers that
  overflow to it), and an object at the top.

Every check costs time linear in the input, whatever the input: clients choose it, and one slow check
stalls every room the gateway serves. So no regular expression that can backtrack runs over client text:
JSON is parsed by the C parser first (linear; its recursion is bounded and caught) and its depth counted
on the parsed value; a name is measured before it is normalized (NFC reorders combining marks in
quadratic time); a Content-Type header is split here rather than by the email package's parser (quadratic
on runs of quotes or semicolons, and recursive on nested comments).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from gateway.options import MAX_NAME_CHARS

ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ROOM_NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit"
# Deeper than any body of ours needs (the join body is 2 levels), far below the parser's recursion limit.
MAX_JSON_DEPTH = 32
# Lists and objects a body may hold ('[' and '{' counted in the raw text, inside strings too): a Janus request
# with 64 streams holds about 130, a join body 2. 80,000 empty lists in a 256 KB frame took 40-150 ms to build.
MAX_JSON_CONTAINERS = 1_000
# Format characters a name may hold: joiners that some scripts and emoji sequences need. Every other
# format character (bidi embeddings, overrides and isolates among them) is refused.
ALLOWED_FORMAT_CHARS = frozenset("\u200c\u200d")
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
# A name is refused unread beyond this many code points: NFC can shorten a name (a base letter and three
# marks make one Greek letter with its accents), never by more than this factor.
MAX_RAW_NAME_CHARS = 4 * MAX_NAME_CHARS
# Longer than any media type with a charset; a longer header is refused before it is parsed.
MAX_CONTENT_TYPE_CHARS = 256
_CONTAINERS = (dict, list)


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
    rule = f"a display name of 1-{MAX_NAME_CHARS} printable characters is required"
    stripped = raw.strip() if isinstance(raw, str) and _encodable(raw) else ""
    if len(stripped) > MAX_RAW_NAME_CHARS:  # before NFC, whose cost grows with the square of a run of marks
        raise InvalidInput(rule)
    name = unicodedata.normalize("NFC", stripped)
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(rule)
    if any(c in BIDI_CONTROLS for c in name):
        raise InvalidInput(f"{rule}: bidirectional control characters are not allowed")
    if not all(c.isprintable() or c in ALLOWED_FORMAT_CHARS for c in name):
        raise InvalidInput(rule)
    return name


def json_content_type(header: str) -> str | None:
    """The charset named by a Content-Type header that must be application/json (None if it names none);
    InvalidInput (415) otherwise. Split here, in linear time, never by the email package."""
    if len(header) > MAX_CONTENT_TYPE_CHARS:
        raise InvalidInput(f"a Content-Type header longer than {MAX_CONTENT_TYPE_CHARS} characters", 415)
    media_type, *parameters = header.split(";")
    if media_type.strip().lower() != "application/json":
        raise InvalidInput("send the request as application/json", 415)
    charset = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().removeprefix('"').removesuffix('"')
    return charset


def plain_body(content_encoding: str, charset: str | None) -> None:
    """Check the headers before the body is read: uncompressed, and UTF-8 if a charset is named."""
    if content_encoding.strip().lower() not in ("", "identity"):
        raise InvalidInput(f"Content-Encoding {content_encoding!r} is not accepted: send plain JSON", 415)
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise InvalidInput(f"charset {charset!r} is not accepted: send JSON as UTF-8", 415)


def json_object(raw: bytes | str) -> dict[str, Any]:
    """The JSON object in a request body or a socket's text frame."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if text.count("[") + text.count("{") > MAX_JSON_CONTAINERS:  # counted in C, before anything is built
        raise InvalidInput(f"request body holds more than {MAX_JSON_CONTAINERS} lists and objects")
    too_deep = InvalidInput(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:  # the C parser: linear in the text; it raises RecursionError past the interpreter's recursion limit
        with _collector_paused():
            body = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
            deeper = json_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # JSONDecodeError, too many digits, and our refusal of NaN and Infinity
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if deeper:
        raise too_deep
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def json_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), counted level by level, each
    value looked at once; it stops one level past `limit`."""
    depth, level = 0, [value]
    while depth <= limit and (level := [v for v in level if isinstance(v, _CONTAINERS)]):
        depth += 1
        level = [child for v in level for child in (v.values() if isinstance(v, dict) else v)]
    return depth


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Without the cyclic garbage collector: many containers built at once make it run again and again, each
    run costlier as the heap grows (80,000 empty lists: 40-150 ms here, 5 ms without). A parse makes no
    reference cycles for it to find."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 is valid JSON, but Python reads it as Infinity
        raise ValueError(f"{text[:20]} is too large a number")
    return number


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape
        return False
    return True
