"""NLLB-200, M2M100 or Marian translation on torch/transformers (a local dir or hub id): the GPU hosts' MT engine.
All targets of all utterances in one `generate` batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from workers.engines.common import EngineUnavailable, import_torch_transformers, torch_device
from workers.engines.mt.base import MtOptions, Request, TranslationResult
from workers.engines.mt.families import NLLB_CODES, language_token, marian_pair, model_family


class TransformersTranslator:
    """NLLB-200 and M2M100 (any pair, one model) or Marian (opus-mt-SRC-TGT, or multi-target with >>xx<<)."""

    def __init__(self, options: MtOptions) -> None:
        if not options.model:
            raise EngineUnavailable("the transformers MT engine needs BABELROOM_MT_MODEL (a local dir or hub id)")
        torch, transformers = import_torch_transformers()
        self.torch = torch
        self.options = options
        self.device = torch_device(torch, options.device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        local_only = not options.allow_download
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(options.model, local_files_only=local_only)
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            options.model, dtype=dtype, local_files_only=local_only
        )
        self.model.to(self.device).eval()
        # src_lang is tokenizer state and the worker translates in concurrent threads: set and use it atomically.
        self.tokenizer_lock = threading.Lock()
        # The checkpoint's own cap on new tokens, when it sets one, else ours.
        self.max_new_tokens = min(options.max_new_tokens, self.model.generation_config.max_new_tokens or 1 << 30)
        self.family = model_family(self.model.config.model_type, type(self.tokenizer).__name__)
        self.marian_pair = marian_pair(options.model) if self.family == "marian" else None
        self.name = f"transformers-{self.family}:{options.model} ({self.device})"

    def language_token(self, code: str) -> int | None:
        """The decoder's target-language token id, or None when the model does not know the language."""
        token = language_token(self.family, code)
        if token is None:
            return None
        i = self.tokenizer.convert_tokens_to_ids(token)
        return None if i is None or i == self.tokenizer.unk_token_id else int(i)

    def supports(self, source: str, target: str) -> bool:
        if self.family == "marian":
            return self.marian_pair is None or self.marian_pair == (source, target)
        return self.language_token(source) is not None and self.language_token(target) is not None

    def translate(self, text: str, source: str, targets: Sequence[str]) -> dict[str, TranslationResult]:
        return self.translate_batch([Request(text, source, tuple(targets))])[0]

    def translate_batch(self, requests: Sequence[Request]) -> list[dict[str, TranslationResult]]:
        """Every target of every utterance is one row of one `generate` call, each row's decoder forced to
        start with its own target-language token."""
        with self.tokenizer_lock:
            input_ids = [ids for r in requests for ids in self._encode(r)]
        batch = self.tokenizer.pad({"input_ids": input_ids}, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = {}
        if self.family != "marian":
            start = self.model.config.decoder_start_token_id
            ids = [[start, self.language_token(t)] for r in requests for t in r.targets]
            kwargs["decoder_input_ids"] = self.torch.tensor(ids, device=self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**batch, **kwargs, max_new_tokens=self.max_new_tokens, num_beams=1)
        texts = iter(self.tokenizer.batch_decode(out, skip_special_tokens=True))
        return [{t: TranslationResult(next(texts).strip(), route=(r.source, t)) for t in r.targets} for r in requests]

    def _encode(self, request: Request) -> list[list[int]]:
        """One row of token ids per target. src_lang is tokenizer state: the caller holds the lock."""
        rows = [request.text] * len(request.targets)
        if self.family == "marian" and self.marian_pair is None:
            rows = [f">>{t}<< {request.text}" for t in request.targets]  # multi-target Marian picks by prefix
        if self.family != "marian":
            self.tokenizer.src_lang = NLLB_CODES[request.source] if self.family == "nllb" else request.source
        ids: list[list[int]] = self.tokenizer(rows)["input_ids"]
        return ids
