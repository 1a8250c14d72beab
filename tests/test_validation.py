"""The gateway's input rules, one by one (the HTTP fuzz test throws them at the endpoints)."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp.http_exceptions import LineTooLong

from gateway.validation import InvalidInput, display_name, json_object, plain_body, room_name
from gateway.web.app import RefusedRequestLog


@pytest.mark.parametrize("name", ["demo", "Team-7", "a", "a_b", "x" * 64])
def test_room_names_that_are_accepted(name: str) -> None:
    assert room_name(name) == name


@pytest.mark.parametrize("name", ["demo\n", "demo\r\n", "\ndemo", "", "-demo", "x" * 65, "dé", "a b", "a/b", "a\x00"])
def test_room_names_are_matched_whole(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid room name"):
        room_name(name)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("  Ana María ", "Ana María"), ("Cafe\u0301", "Café"), ("👩\u200d💻 Lin", "👩\u200d💻 Lin"), ("علي", "علي")],
)
def test_display_names_are_trimmed_and_normalized(raw: str, expected: str) -> None:
    assert display_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Ana\u202eevil", "bidirectional"),
        ("\u2066Ana", "bidirectional"),
        ("Ana\u200f", "bidirectional"),
        ("Ana\ud800", "printable"),
        ("A\nna", "printable"),
        ("A\x1b[31m", "printable"),
        ("A\u00adna", "printable"),  # soft hyphen: an invisible format character
        ("", "printable"),
        ("x" * 65, "printable"),
        (42, "printable"),
        (None, "printable"),
    ],
)
def test_display_names_that_are_refused(raw: object, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        display_name(raw)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 50 + b"]" * 50, "nested deeper than 32"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "more than 1000 lists and objects"),
        (b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}", "nested deeper"),  # the parser's own recursion limit
        (b'{"a": [' + b"{}," * 1000 + b"{}]}", "more than 1000 lists and objects"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": 1', "not valid JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_json_bodies_that_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        json_object(body)


def test_brackets_inside_strings_are_not_nesting() -> None:
    assert json_object(b'{"name": "' + b"[" * 100 + b'\\"{"}') == {"name": "[" * 100 + '"{'}


@pytest.mark.parametrize(("encoding", "charset"), [("gzip", None), ("br", None), ("", "bogus-xyz"), ("", "utf-16")])
def test_compressed_or_non_utf8_bodies_are_unsupported_media(encoding: str, charset: str | None) -> None:
    with pytest.raises(InvalidInput) as refused:
        plain_body(encoding, charset)
    assert refused.value.status == 415
    plain_body("identity", "UTF-8")  # the plain case passes


def test_a_refused_request_is_logged_as_one_warning_line() -> None:
    """aiohttp's ERROR with a traceback for a request line it cannot parse becomes a short WARNING."""
    try:
        raise LineTooLong("/x?" + "a" * 9000, "8190")
    except LineTooLong:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request from %s",
                                   ("198.18.0.2",), sys.exc_info())  # fmt: skip
    assert RefusedRequestLog().filter(record)
    message = logging.Formatter().format(record)
    assert record.levelno == logging.WARNING and "Traceback" not in message and len(message) < 250
    assert message.startswith("Error handling request from 198.18.0.2, answered 400 (LineTooLong: Got more than")
    other = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request", (), None)
    assert RefusedRequestLog().filter(other) and other.levelno == logging.ERROR  # anything else is left alone
