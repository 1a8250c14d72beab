"""What every engine module shares: the error for a missing dependency or model, the model cache, and torch's
loading."""

from __future__ import annotations

from typing import Any

DEFAULT_CACHE_DIR = "~/.cache/babelroom/models"  # models joined from wheels or converted, for every stage


class EngineUnavailable(RuntimeError):
    """A dependency or model is missing; the message says how to install it."""


def import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EngineUnavailable(
            "the transformers engines need torch and transformers: pip install 'babelroom[gpu]' "
            "(CPU only: pip install torch==2.13.0 transformers)"
        ) from exc
    return torch, transformers


def torch_device(torch: Any, device: str) -> str:
    """ "auto" is cuda when torch sees a GPU, else cpu; anything else is taken as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
