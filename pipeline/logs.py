"""Logging for every BabelRoom process: one format, and no secret in any line.

`configure` sets up the root handler, and every handler of the root logger gets the one `Redact` filter, so
each record is cleaned before any handler writes it (aiohttp's access log included: its request lines and
Referer headers carry `?ticket=` and `?token=`). It replaces with [redacted]:

- the value of a query parameter or a JSON or Python-dict field named like a secret (ticket, token, key,
  secret, password, credential, pin, ...);
- anything shaped like a join token (base64url, a dot, a 43-character signature), wherever it appears;
- a password in a URL (`redis://:password@host`);
- the values of the secrets the process was given (`SECRET_SETTINGS`) and of those it makes later
  (`protect`: the fresh Janus secrets of `babelroom up`, the TURN secret).

Every pattern is matched in time linear in the line (no pattern can backtrack over a run it already read):
a log line may quote what a client sent. For the same reason a message is cut after MAX_MESSAGE_CHARS.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The settings that hold secrets: their values never appear in a log.
SECRET_SETTINGS = (
    "BABELROOM_TOKEN_SECRET",
    "BABELROOM_JANUS_API_SECRET",
    "BABELROOM_JANUS_ADMIN_KEY",
    "BABELROOM_TURN_SECRET",
    "BABELROOM_MONITORING_TOKEN",
)
# Shorter values are not searched for: they would blank out ordinary words (a test's secret "s").
MIN_SECRET_CHARS = 8
REDACTED = "[redacted]"
# A log message is cut after this many characters: one may quote what a client sent (a refused request's
# field), and a line per frame of 256 KB would fill a disk.
MAX_MESSAGE_CHARS = 2_000
_NAMES = r"(?:ticket|token|key|api|apisecret|api_secret|admin_key|secret|password|pwd|credential|pin)"
_PATTERNS = (
    # ?ticket=..., &token=..., key=... in a URL or a line of text
    re.compile(rf"(?i)(?<![A-Za-z0-9])({_NAMES}=)[^&\s\"',;#]+"),
    # "ticket": "...", 'credential': '...' (JSON, a dict's repr)
    re.compile(rf"(?i)([\"']{_NAMES}[\"']\s*+:\s*+[\"'])[^\"']+"),
    # a join token anywhere: base64url claims, a dot, the 43-character HMAC-SHA256
    re.compile(r"()(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,}+\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"),
    # scheme://user:password@host
    re.compile(r"(://[^/\s:@]*+:)[^/\s@]++(?=@)"),
)


class Redact(logging.Filter):
    """Rewrites each record's message, traceback and stack without the secrets (see the module's docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.values: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.values |= {value for value in secrets if len(value) >= MIN_SECRET_CHARS}

    def clean(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):  # by this filter on another handler already
            return True
        record.redacted = True
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:  # a client's input quoted in full would make each line its size
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} characters cut)"
        cleaned = self.clean(message)
        if cleaned != record.getMessage():
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        return True


REDACT = Redact()


def secrets_in(env: Mapping[str, str]) -> list[str]:
    return [env[name] for name in SECRET_SETTINGS if env.get(name)]


def protect(*secrets: str) -> None:
    """Secrets made after `configure` (drawn at start): from now on they are redacted too."""
    REDACT.add(secrets)


def protected(secret: str) -> str:
    """`secret`, redacted from now on."""
    protect(secret)
    return secret


def configure(level: str | int, secrets: Iterable[str] = (), quiet: Iterable[str] = ()) -> None:
    """The root handler (stderr) at `level` with LOG_FORMAT, loggers in `quiet` at WARNING, and the redaction
    filter on every handler the root logger has."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    REDACT.add(secrets)
    for handler in logging.getLogger().handlers:
        if REDACT not in handler.filters:
            handler.addFilter(REDACT)
