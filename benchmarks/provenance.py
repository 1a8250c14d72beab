"""What every benchmark JSON records about where and when it ran, so each figure in RESULTS.md names its
machine, date and models."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.engines.asr.base import AsrOptions

UNKNOWN = "unknown"


def provenance(models: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    """{"machine": ..., "date": ..., "models": ..., "load_average": ...}: the block each benchmark writes into
    its JSON. The 1-minute load average at the start hints whether other work shared the cores."""
    return {"machine": machine(device), "date": today(), "models": models, "load_average": round(os.getloadavg()[0], 2)}


def cpu_whisper(options: AsrOptions | None = None) -> str:
    """The faster-whisper model CPU workers load with `options` (the defaults), and how they decode finals."""
    from workers.engines.asr.base import AsrOptions

    options = options or AsrOptions()
    return f"Whisper {Path(options.model).name} (faster-whisper, int8; {options.final_pass})"


def result_stem(benchmark: str, device: str, tiny: bool, usual_device: str) -> str:
    """The name of a run's JSON and PNG: "gpu" on its usual device, "gpu-cpu-tiny" for the tests' run."""
    return benchmark + (f"-{device}" if device != usual_device else "") + ("-tiny" if tiny else "")


def save(result: dict[str, Any], out_dir: Path, stem: str, plot: Callable[[dict[str, Any], Path], None]) -> None:
    """Write out_dir/STEM.json and draw out_dir/STEM.png from it (the report redraws it the same way)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out_dir / f"{stem}.png")


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def machine(device: str = "cpu") -> str:
    """E.g. "2 cores of an Intel(R) Xeon(R) ..., Debian GNU/Linux 12 (bookworm), Python 3.11, no GPU"."""
    gpu = gpu_name() if device.startswith("cuda") else "no GPU"
    return f"{os.cpu_count()} cores of an {cpu_name()}, {os_name()}, Python {platform.python_version()}, {gpu}"


def cpu_name() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or UNKNOWN


def os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def gpu_name() -> str:
    try:
        import torch
    except ImportError:
        return "GPU (torch not installed)"
    if not torch.cuda.is_available():
        return "no GPU visible to torch"
    return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
