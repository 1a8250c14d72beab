"""The gateway's long-lived tasks (the results reader, timers), supervised: one that fails is logged and
restarted after a short backoff, and its state is what /healthz reports, so a dead reader can neither
go unnoticed nor stay dead."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.bus import cancel_and_wait

log = logging.getLogger(__name__)

# Waits before restarting a task after its 1st, 2nd, ... consecutive failure: capped at a few seconds,
# since a task down means rooms without captions.
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 3.0)
# A task that ran this long since its last restart counts as recovered: its backoff starts afresh, and
# /healthz stops calling it unsteady.
HEALTHY_AFTER_S = 10.0


@dataclass
class TaskState:
    running: bool = False
    restarts: int = 0
    failures_in_a_row: int = 0
    last_error: str = ""
    started_at: float = 0.0  # monotonic

    def steady(self, now: float, healthy_after_s: float) -> bool:
        return self.running and (self.restarts == 0 or now - self.started_at >= healthy_after_s)

    def public(self) -> dict[str, Any]:
        return {"running": self.running, "restarts": self.restarts, "last_error": self.last_error}


class TaskSupervisor:
    def __init__(
        self, backoff_s: tuple[float, ...] = RESTART_BACKOFF_S, healthy_after_s: float = HEALTHY_AFTER_S
    ) -> None:
        self.backoff_s = backoff_s
        self.healthy_after_s = healthy_after_s
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` until stopped; whenever it raises (or returns), run it again after the backoff."""
        self.states[name] = TaskState()
        self._tasks[name] = asyncio.create_task(self._keep_running(name, run), name=f"gateway:{name}")

    @property
    def healthy(self) -> bool:
        now = time.monotonic()
        return all(state.steady(now, self.healthy_after_s) for state in self.states.values())

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: state.public() for name, state in self.states.items()}

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks.values())
        self._tasks.clear()

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        state = self.states[name]
        while True:
            state.running, state.started_at = True, time.monotonic()
            try:
                await run()
                error = "returned"  # a long-lived task has no business ending: restart it as well
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("gateway task %s failed; restarting it", name)
            state.running = False
            if time.monotonic() - state.started_at >= self.healthy_after_s:
                state.failures_in_a_row = 0
            delay = self.backoff_s[min(state.failures_in_a_row, len(self.backoff_s) - 1)]
            state.failures_in_a_row += 1
            state.restarts += 1
            state.last_error = error
            await asyncio.sleep(delay)
