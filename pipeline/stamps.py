"""Where a message's time went, read from its stamps.

A worker stamps `{stage}.start` when it takes a message and `{stage}` when its output is ready, so the
stamps of a message that crossed the pipeline alternate queue hops and work:

    published -> asr.start (queue) -> asr (work) -> mt.start (queue) -> mt (work) -> ...

`stage_spans` names each step: "asr queue" for the wait before a stage took the message, "asr" for the
stage's own work, and "a->b" between stamps that are neither (e.g. "captured->published").
"""

from __future__ import annotations

import itertools

from pipeline.messages import Stamps

START = ".start"


def start_stamp(stage: str) -> str:
    return f"{stage}{START}"


def stage_spans(stamps: Stamps) -> list[tuple[str, float]]:
    """(span name, seconds) for each pair of consecutive stamps, in order."""
    spans = []
    for (before, at), (after, then) in itertools.pairwise(stamps):
        if after.endswith(START):
            name = f"{after.removesuffix(START)} queue"
        elif before == start_stamp(after):
            name = after
        else:
            name = f"{before}->{after}"
        spans.append((name, then - at))
    return spans


def format_spans(stamps: Stamps) -> str:
    """One log line's worth: `asr queue=3ms asr=812ms mt queue=1ms ...`."""
    return " ".join(f"{name.replace(' ', '_')}={seconds * 1000:.0f}ms" for name, seconds in stage_spans(stamps))
