"""Worker kinds and how to build each one's stage (imported lazily: each pulls its own engines)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from pipeline.routes import WORKER_KINDS
from workers.stage import Stage


def build_stage(kind: str, env: Mapping[str, str]) -> Stage:
    if kind not in WORKER_KINDS:
        raise ValueError(f"unknown worker kind {kind!r}; choose one of: {', '.join(WORKER_KINDS)}")
    module = importlib.import_module(f"workers.{kind}")
    stage: Stage = module.build_stage(env)
    return stage
