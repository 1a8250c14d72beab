"""Speech recognition behind one protocol: `Recognizer.transcribe(segment) -> Transcript`. One module each:

- `base`: the protocol, `AsrOptions` / `GuardOptions` and `load_recognizer`;
- `guard`: `HallucinationGuard`, language-independent checks that keep noise and loops out of captions;
- `models`: the Whisper models that install offline from wheels;
- `whisper_ct2`: `FasterWhisperRecognizer` (CTranslate2), the offline default;
- `whisper_torch`: `TransformersWhisperRecognizer` (torch), for GPUs where CTranslate2 cannot run.

Both engines use the participant's declared language and detect only when none was declared (detection on short
synthetic speech is unreliable). The names below are the stage's public API; what every engine shares
(EngineUnavailable, DEFAULT_CACHE_DIR, torch's loading) lives in `workers.engines.common`, also named here for
code written before the split.
"""

from workers.engines.asr.base import (
    FIT,
    FULL,
    AsrOptions,
    BatchRecognizer,
    GuardOptions,
    Recognizer,
    WarmRecognizer,
    load_recognizer,
    transcribe_all,
)
from workers.engines.asr.models import bundled_base_dir, join_model_parts
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.asr.whisper_torch import TransformersWhisperRecognizer
from workers.engines.common import DEFAULT_CACHE_DIR, EngineUnavailable, import_torch_transformers, torch_device

__all__ = [
    "DEFAULT_CACHE_DIR",
    "FIT",
    "FULL",
    "AsrOptions",
    "BatchRecognizer",
    "EngineUnavailable",
    "FasterWhisperRecognizer",
    "GuardOptions",
    "Recognizer",
    "TransformersWhisperRecognizer",
    "WarmRecognizer",
    "bundled_base_dir",
    "import_torch_transformers",
    "join_model_parts",
    "load_recognizer",
    "torch_device",
    "transcribe_all",
]
