"""Whisper on torch (transformers): for GPUs where CTranslate2 cannot run; a local dir or hub id."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.audio import Samples
from pipeline.messages import SAMPLE_RATE, SpeechSegment, Transcript
from workers.engines.asr.base import MAX_NEW_TOKENS, WHISPER_LANGUAGES, AsrOptions, empty_transcript
from workers.engines.asr.guard import HallucinationGuard, SegmentScores, compression_ratio, speech_audio
from workers.engines.asr.models import resolve_model
from workers.engines.common import import_torch_transformers, torch_device
from workers.stage import batched, single


class TransformersWhisperRecognizer:
    """Whisper on torch, greedy decoding with a KV cache written out here so the prompt (language, task,
    no timestamps) and the scores the guard needs do not depend on a transformers version's generate().

    Batches across rooms: segments are padded to Whisper's 30 s window anyway, so B of them make one
    encoder pass and one decoding loop (rows that reached end-of-text idle until the longest is done)."""

    def __init__(self, options: AsrOptions = AsrOptions()) -> None:
        torch, transformers = import_torch_transformers()
        self.torch = torch
        self.options = options
        self.device = torch_device(torch, options.device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        source = resolve_model(options.model, options.cache_dir)
        local_only = not options.allow_download
        self.processor = transformers.WhisperProcessor.from_pretrained(source, local_files_only=local_only)
        self.model = transformers.WhisperForConditionalGeneration.from_pretrained(
            source, dtype=self.dtype, local_files_only=local_only
        )
        self.model.to(self.device).eval()
        # The checkpoint's own cap on new tokens, when it sets one, else ours.
        self.max_new_tokens = min(MAX_NEW_TOKENS, self.model.generation_config.max_new_tokens or 1 << 30)
        # transformers 5.x renamed the KV cache argument and output from past_key_values to cache.
        forward_args = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        tok = self.processor.tokenizer
        self.sot, self.eot = tok.convert_tokens_to_ids("<|startoftranscript|>"), tok.eos_token_id
        self.transcribe_id = tok.convert_tokens_to_ids("<|transcribe|>")
        self.no_timestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
        self.no_speech = _first_token_id(tok, ("<|nospeech|>", "<|nocaptions|>"))
        self.language_ids = {
            code: i for code in WHISPER_LANGUAGES if (i := tok.convert_tokens_to_ids(f"<|{code}|>")) != tok.unk_token_id
        }
        self.languages = tuple(self.language_ids) or ("en",)
        self.guard = HallucinationGuard(options.guard)
        self.name = f"transformers-whisper:{options.model} ({self.device}, {str(self.dtype).removeprefix('torch.')})"

    def transcribe(self, segment: SpeechSegment) -> Transcript:
        return single(self.transcribe_batch([segment])[0])

    def transcribe_batch(self, segments: Sequence[SpeechSegment]) -> list[Transcript | Exception]:
        return batched(segments, self._heard, self._decode_heard)

    def _heard(self, segment: SpeechSegment) -> Heard:
        return Heard(segment, speech_audio(segment, self.languages, self.guard))

    def _decode_heard(self, batch: list[Heard]) -> list[Transcript]:
        """Segments with speech decode together; the guard's silence gets an empty transcript, no decoding."""
        speech = [h for h in batch if h.audio is not None]
        decoded = iter(self.decode([h.audio[0] for h in speech if h.audio], [h.segment.language for h in speech]))
        return [self._judged(h, next(decoded)) if h.audio else empty_transcript(h.segment) for h in batch]

    def _judged(self, heard: Heard, decoded: Decoded) -> Transcript:
        assert heard.audio is not None
        text, speech_s = decoded.text, heard.audio[1]
        scores = SegmentScores(text, decoded.no_speech_prob, decoded.avg_logprob, compression_ratio(text))
        transcript = empty_transcript(heard.segment, decoded.language)
        if not self.guard.keep_segment(scores) or not self.guard.plausible_text(text.split(), speech_s):
            return transcript
        return dataclasses.replace(transcript, text=text)

    def decode(self, audios: Sequence[Samples], declared: Sequence[str]) -> list[Decoded]:
        """Greedy decoding of a batch of clips (each at most 30 s), in the declared language where one is given."""
        if not audios:
            return []
        with self.torch.inference_mode():
            features = self.processor.feature_extractor(
                list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt", device=self.device
            )
            encoded = self.model.get_encoder()(features.input_features.to(self.device, self.dtype))
            languages, no_speech = self._first_step(encoded, declared)
            rows = self._greedy(encoded, [self._prompt(language) for language in languages])
        texts = self.processor.tokenizer.batch_decode([tokens for tokens, _ in rows], skip_special_tokens=True)
        return [
            Decoded(language, text.strip(), p, avg)
            for language, text, p, (_, avg) in zip(languages, texts, no_speech, rows, strict=True)
        ]

    def draft(self, segment: SpeechSegment, prefix: str) -> str:
        """No quicker pass on this engine (a GPU decodes the full window fast): the plain transcription."""
        return self.transcribe(segment).text

    def _prompt(self, language: str) -> list[int]:
        if not self.language_ids:  # English-only model: no language or task tokens
            return [self.sot, self.no_timestamps]
        return [self.sot, self.language_ids[language], self.transcribe_id, self.no_timestamps]

    def _first_step(self, encoded: Any, declared: Sequence[str]) -> tuple[list[str], list[float]]:
        """One decoder step after <|startoftranscript|>: each row's no-speech probability and, where none was
        declared, its language."""
        start = self.torch.full((len(declared), 1), self.sot, device=self.device)
        logits = self.model(encoder_outputs=encoded, decoder_input_ids=start).logits[:, -1].float()
        no_speech = [0.0] * len(declared)
        if self.no_speech is not None:
            no_speech = logits.softmax(-1)[:, self.no_speech].tolist()
        if not self.language_ids:
            return [language or "en" for language in declared], no_speech
        codes, ids = list(self.language_ids), list(self.language_ids.values())
        detected = logits[:, ids].argmax(-1).tolist()
        return [language or codes[best] for language, best in zip(declared, detected, strict=True)], no_speech

    def _greedy(self, encoded: Any, prompts: list[list[int]]) -> list[tuple[list[int], float]]:
        """Each row's text tokens and mean log-probability (call under inference_mode). One host sync per step
        for the whole batch."""
        torch = self.torch
        step_ids = torch.tensor(prompts, device=self.device)
        past: Any = None
        rows = [GreedyRow() for _ in prompts]
        for _ in range(self.max_new_tokens):
            out = self.model(
                encoder_outputs=encoded, decoder_input_ids=step_ids, use_cache=True, **{self.cache_arg: past}
            )
            logits = out.logits[:, -1].float()
            logits[:, self.eot + 1 :] = -float("inf")  # only text and end-of-text: no timestamps or specials
            lp = logits.log_softmax(-1)
            best = lp.argmax(-1)
            scores = lp.gather(1, best[:, None])[:, 0]
            for row, token, score in zip(rows, best.tolist(), scores.tolist(), strict=True):
                row.add(token, score, self.eot)
            if all(row.done for row in rows):
                break
            past, step_ids = getattr(out, self.cache_arg), best[:, None]
        return [(row.tokens, row.avg_logprob) for row in rows]


@dataclass
class GreedyRow:
    """One row of a batched greedy decode: it stops growing at end-of-text while the others go on."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False

    def add(self, token: int, logprob: float, eot: int) -> None:
        if self.done:
            return
        self.logprobs.append(logprob)
        self.done = token == eot
        if not self.done:
            self.tokens.append(token)

    @property
    def avg_logprob(self) -> float:
        return float(np.mean(self.logprobs)) if self.logprobs else -np.inf


@dataclass(frozen=True)
class Heard:
    """A segment and, when the guard hears speech in it, its samples and seconds of speech."""

    segment: SpeechSegment
    audio: tuple[Samples, float] | None


@dataclass(frozen=True)
class Decoded:
    language: str
    text: str
    no_speech_prob: float
    avg_logprob: float


def _first_token_id(tokenizer: Any, candidates: Sequence[str]) -> int | None:
    for token in candidates:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and i != tokenizer.unk_token_id:
            return int(i)
    return None
