"""The contract between the worker runtime and one pipeline stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast, runtime_checkable

from pipeline.messages import Message

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
Result = TypeVar("Result")

# What one message of a batch came to: its outputs, or the exception it alone raised.
Outcome = Sequence[Message] | Exception


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


@runtime_checkable
class BatchStage(Stage, Protocol):
    """A stage whose engine runs several messages (from any rooms) as one batch: one GPU call instead of B.

    `process_batch` returns one Outcome per message, in order: a message that fails alone (bad audio, an
    unknown language) does not fail the others. Raising fails every message of the batch."""

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]: ...


def batched(
    items: Sequence[Item], prepare: Callable[[Item], Prepared], run: Callable[[list[Prepared]], Sequence[Result]]
) -> list[Result | Exception]:
    """Check and prepare each item alone (one that raises gets its exception as its result), then run the
    prepared ones together: `run` returns one result per prepared item, in order."""
    results: list[Result | Exception | None] = [None] * len(items)
    ready: list[tuple[int, Prepared]] = []
    for i, item in enumerate(items):
        try:
            ready.append((i, prepare(item)))
        except Exception as exc:
            results[i] = exc
    if ready:
        for (i, _), result in zip(ready, run([prepared for _, prepared in ready]), strict=True):
            results[i] = result
    return cast(list[Result | Exception], results)  # every slot was filled by one of the two loops


def one_by_one(items: Sequence[Item], work: Callable[[Item], Result]) -> list[Result | Exception]:
    """`work` on each item alone, what one raises becoming its result: the batch path of an engine that
    does not batch."""
    return batched(items, work, list)


def single(outcome: Result | Exception) -> Result:
    """The result of a batch of one, raising what it raised: `process` is `process_batch` of one message."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
