"""The contract between the worker runtime and one pipeline stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.messages import Message


class PermanentError(Exception):
    """An input that can never succeed (unknown language, unreadable audio): dead-letter it at once."""


class Stage(Protocol):
    """One stage (asr, mt, tts, ...). `load` and `process` block; the runtime calls them off the loop.

    `process` returns the messages to emit; the runtime routes each by type (pipeline.routes),
    emits each exactly once per (room, speaker, seq, language, stage), and acknowledges the input.
    Raising PermanentError dead-letters the input; any other exception is retried up to the limit.
    """

    kind: str

    def load(self) -> None: ...

    def process(self, message: Message) -> Sequence[Message]: ...
