"""VITS voices (MMS-TTS) on torch, batched by length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.audio import Samples
from workers.engines.common import import_torch_transformers, torch_device
from workers.engines.tts.base import DEFAULT_DEVICE, Audio

# VITS batches group texts whose lengths differ by at most this factor: a batch costs as much as its longest
# row times its size, so mixing a short caption with a long one would waste most of the short one's share.
LENGTH_GROUP_RATIO = 1.5


class VitsSynthesizer:
    """MMS-TTS and other VITS checkpoints: one model per language (facebook/mms-tts-deu ...).

    Batches across rooms, grouped by length: a batch runs as long as its longest text (the vocoder works on
    the padded spectrogram), so texts are sorted by length and cut into groups whose longest is at most
    LENGTH_GROUP_RATIO times their shortest."""

    def __init__(self, model: str, language: str, device: str = DEFAULT_DEVICE, allow_download: bool = False) -> None:
        torch, transformers = import_torch_transformers()
        self.torch = torch
        self.device = torch_device(torch, device)
        if self.device.startswith("cuda"):
            # cuDNN's autotuner re-tunes its convolutions for every new input length, and every utterance has
            # a new length: measured on an H100, 1.5 s per call with it on instead of 0.03 s.
            torch.backends.cudnn.benchmark = False
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, local_files_only=not allow_download)
        # fp32: VITS' flow and duration predictor are sensitive to fp16, and it is cheap anyway.
        self.model = transformers.VitsModel.from_pretrained(model, local_files_only=not allow_download)
        self.model.to(self.device).eval()
        self.rate = int(self.model.config.sampling_rate)
        self.language = language
        self.name = f"vits:{model} ({self.device})"

    def supports(self, language: str) -> bool:
        return language == self.language

    def synthesize(self, text: str, language: str) -> Audio:
        return self.synthesize_batch([text], language)[0]

    def synthesize_batch(self, texts: Sequence[str], language: str) -> list[Audio]:
        ids = [self.tokenizer(text)["input_ids"] for text in texts]
        audio = [Audio(np.zeros(0, dtype=np.float32), self.rate) for _ in texts]  # no tokens: no speech
        for group in length_groups([i for i in range(len(ids)) if ids[i]], [len(x) for x in ids]):
            for i, samples in zip(group, self._run([ids[i] for i in group]), strict=True):
                audio[i] = Audio(samples, self.rate)
        return audio

    def _run(self, rows: list[list[int]]) -> list[Samples]:
        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model(**batch)
        lengths = out.sequence_lengths.tolist()
        waves = out.waveform.float().cpu().numpy()
        return [waves[i, :n].astype(np.float32) for i, n in enumerate(lengths)]


def length_groups(indices: Sequence[int], lengths: Sequence[int], ratio: float = LENGTH_GROUP_RATIO) -> list[list[int]]:
    """`indices` sorted by length and cut wherever the next is more than `ratio` times its group's shortest."""
    groups: list[list[int]] = []
    for i in sorted(indices, key=lambda i: lengths[i]):
        if groups and lengths[i] <= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
