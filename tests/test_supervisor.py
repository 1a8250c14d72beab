"""`babelroom up`'s supervisor: restarts crashed children with backoff, stops all, leaves none behind."""

from __future__ import annotations

import os
import sys
import time

import pytest

from babelroom import supervisor
from babelroom.supervisor import Child, Supervisor


def python_child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ))


def test_crashed_child_is_restarted_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", (0.1, 0.3))
    crasher = python_child("crasher", "import sys; sys.exit(3)")
    steady = python_child("steady", "import time; time.sleep(60)")
    sup = Supervisor([crasher, steady])
    for child in sup.children:
        child.start()
    deadline = time.monotonic() + 15
    while len(crasher.history) < 3 and time.monotonic() < deadline:
        sup.check_children()
        time.sleep(0.05)
    assert crasher.history[:3] == [3, 3, 3]
    assert steady.history == [] and steady.process is not None and steady.process.poll() is None
    sup.stop_all()
    assert steady.process.poll() is not None


def test_stop_kills_a_child_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 0.5)
    stubborn = python_child(
        "stubborn",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    sup = Supervisor([stubborn])
    stubborn.start()
    time.sleep(0.5)
    started = time.monotonic()
    sup.stop_all()
    assert stubborn.process is not None and stubborn.process.poll() is not None
    assert time.monotonic() - started < 5
