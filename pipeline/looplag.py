"""How late the event loop runs: one blocking call (a slow parse, a synchronous library) delays every room the
process serves, so the lag is measured, not guessed.

`LoopLag.run` wakes every INTERVAL_S and notes how much later than asked it woke: the loop's lag at that
moment. It keeps the worst of the last WINDOW_S (what a scraper that reads it more often than that sees
completely) and hands each sample to a callback (a histogram).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

INTERVAL_S = 0.02
WINDOW_S = 10.0


class LoopLag:
    def __init__(self, observe: Callable[[float], None] = lambda lag: None, interval_s: float = INTERVAL_S) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self.worst_s = 0.0  # since start
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag)

    def recent_worst_s(self, now: float | None = None) -> float:
        """The worst lag of the last WINDOW_S."""
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()
        return max((lag for _, lag in self._recent), default=0.0)

    def note(self, lag: float, now: float) -> None:
        self.worst_s = max(self.worst_s, lag)
        while self._recent and self._recent[-1][1] <= lag:  # a later, worse sample outlives it in the window
            self._recent.pop()
        self._recent.append((now, lag))
        self.observe(lag)

    async def run(self) -> None:
        while True:
            asked = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.note(max(0.0, now - asked), now)
