"""Neural MT on a CPU: OPUS-MT (Marian), NLLB-200 or M2M100 models converted by CTranslate2's own converter
(`ct2-transformers-converter --quantization int8 --copy_files ...`, or `babelroom models fetch`), run int8.

Every configured model loads with the worker and stays in memory, so each of its pairs is warm. All targets of
all utterances in a batch go to each model in one `translate_batch` call. Tokenization is the models' own
SentencePiece files, copied beside the converted weights: no torch or transformers at run time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import ISO_639_1, MtOptions, Request, TranslationResult
from workers.engines.mt.families import language_token, marian_pair

MT_CACHE_SUBDIR = "mt"  # converted MT models live in <model cache>/mt/<name>
MARIAN_SPM = ("source.spm", "target.spm")
SHARED_SPM = "sentencepiece.bpe.model"  # NLLB and M2M100
EOS = "</s>"
_MARIAN_TARGET = re.compile(r">>([a-z]{2,3})<<")


def import_ctranslate2() -> tuple[Any, Any]:
    try:
        import ctranslate2
        import sentencepiece
    except ImportError as exc:
        raise EngineUnavailable("the ctranslate2 MT engine needs: pip install 'babelroom[mt]'") from exc
    return ctranslate2, sentencepiece


def mt_cache(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / MT_CACHE_SUBDIR


def is_ctranslate2_model(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def model_dirs(options: MtOptions) -> list[Path]:
    """The configured models: paths or names in the cache; none configured means every model in the cache."""
    cache = mt_cache(options.cache_dir)
    if not options.model.strip():
        found = sorted(p for p in cache.glob("*") if is_ctranslate2_model(p)) if cache.is_dir() else []
        if not found:
            raise EngineUnavailable(
                f"no CTranslate2 MT model in {cache}: fetch one where a network is allowed with "
                "BABELROOM_ALLOW_DOWNLOAD=1 babelroom models fetch Helsinki-NLP/opus-mt-en-es"
            )
        return found
    dirs = []
    for name in filter(None, (n.strip() for n in options.model.split(","))):
        path = Path(name).expanduser()
        path = path if path.is_dir() else cache / name
        if not is_ctranslate2_model(path):
            raise EngineUnavailable(
                f"MT model {name!r}: no CTranslate2 model (model.bin, config.json) at {path}; convert one with "
                f"BABELROOM_ALLOW_DOWNLOAD=1 babelroom models fetch {name}"
            )
        dirs.append(path)
    return dirs


def read_vocabulary(model_dir: Path) -> list[str]:
    """The target vocabulary of a converted model (shared, or the target side of separate ones)."""
    for stem in ("shared_vocabulary", "target_vocabulary"):
        if (model_dir / f"{stem}.json").is_file():
            tokens: list[str] = json.loads((model_dir / f"{stem}.json").read_text())
            return tokens
        if (model_dir / f"{stem}.txt").is_file():
            return (model_dir / f"{stem}.txt").read_text().splitlines()
    raise EngineUnavailable(f"{model_dir}: no vocabulary file (shared_vocabulary.json or target_vocabulary.json)")


@dataclass(frozen=True)
class Row:
    """One (utterance, target) pair as the model sees it."""

    request: int
    target: str
    source_tokens: list[str]
    target_prefix: list[str] | None


class Ct2Model:
    """One converted model, its tokenizer and the pairs it can do."""

    def __init__(self, model_dir: Path, options: MtOptions, device: str) -> None:
        ctranslate2, sentencepiece = import_ctranslate2()
        self.dir = model_dir
        vocabulary = set(read_vocabulary(model_dir))
        self.family = detect_family(model_dir, vocabulary)
        if self.family == "marian":
            self.source_spm, self.target_spm = (
                sentencepiece.SentencePieceProcessor(model_file=str(model_dir / n)) for n in MARIAN_SPM
            )
            self.marian_targets = {m.group(1) for t in vocabulary if (m := _MARIAN_TARGET.fullmatch(t))}
            self.pair = None if self.marian_targets else marian_pair(model_dir.name)
            if not self.marian_targets and self.pair is None:
                raise EngineUnavailable(f"{model_dir}: a single-pair Marian model's dir must be named opus-mt-SRC-TGT")
        else:
            self.source_spm = self.target_spm = sentencepiece.SentencePieceProcessor(
                model_file=str(model_dir / SHARED_SPM)
            )
            self.languages = {code for code in ISO_639_1 if language_token(self.family, code) in vocabulary}
        self.translator = ctranslate2.Translator(
            str(model_dir), device=device, compute_type=options.compute_type, inter_threads=1,
            intra_threads=options.threads,
        )  # fmt: skip

    def supports(self, source: str, target: str) -> bool:
        if self.family != "marian":
            return source in self.languages and target in self.languages
        if self.marian_targets:
            return target in self.marian_targets
        return self.pair == (source, target)

    def row(self, index: int, text: str, source: str, target: str) -> Row:
        pieces: list[str] = self.source_spm.encode(text, out_type=str)
        if self.family == "marian":
            prefix = [f">>{target}<<"] if self.marian_targets else []
            return Row(index, target, [*prefix, *pieces, EOS], None)
        source_token, target_token = language_token(self.family, source), language_token(self.family, target)
        assert source_token is not None and target_token is not None  # supports() said so
        return Row(index, target, [source_token, *pieces, EOS], [target_token])

    def run(self, rows: Sequence[Row], options: MtOptions) -> list[str]:
        prefixes = [r.target_prefix for r in rows] if self.family != "marian" else None
        results = self.translator.translate_batch(
            [r.source_tokens for r in rows], target_prefix=prefixes, beam_size=options.beam_size,
            max_decoding_length=options.max_new_tokens, max_batch_size=0,
        )  # fmt: skip
        skip = 0 if self.family == "marian" else 1  # NLLB and M2M100 hypotheses start with the forced language
        return [str(self.target_spm.decode(r.hypotheses[0][skip:])).strip() for r in results]


def detect_family(model_dir: Path, vocabulary: set[str]) -> str:
    """Which tokenizer files the converter copied beside the weights say which family the model is."""
    if all((model_dir / n).is_file() for n in MARIAN_SPM):
        return "marian"
    if (model_dir / SHARED_SPM).is_file():
        return "nllb" if "eng_Latn" in vocabulary else "m2m100"
    raise EngineUnavailable(
        f"{model_dir}: no tokenizer beside the weights; convert with --copy_files source.spm target.spm (Marian) "
        f"or --copy_files {SHARED_SPM} (NLLB, M2M100)"
    )


class Ctranslate2Translator:
    def __init__(self, options: MtOptions) -> None:
        ctranslate2, _ = import_ctranslate2()
        self.options = options
        device = options.device
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        self.models = [Ct2Model(d, options, device) for d in model_dirs(options)]
        names = ", ".join(m.dir.name for m in self.models)
        self.name = f"ctranslate2:{names} ({device}, {options.compute_type})"

    def model_for(self, source: str, target: str) -> Ct2Model | None:
        """The first configured model that does the pair (the order given, or the cache's names sorted)."""
        return next((m for m in self.models if m.supports(source, target)), None)

    def supports(self, source: str, target: str) -> bool:
        return self.model_for(source, target) is not None

    def translate(self, text: str, source: str, targets: Sequence[str]) -> dict[str, TranslationResult]:
        return self.translate_batch([Request(text, source, tuple(targets))])[0]

    def translate_batch(self, requests: Sequence[Request]) -> list[dict[str, TranslationResult]]:
        """Rows grouped by model; each model translates its rows in one call."""
        by_model: dict[int, tuple[Ct2Model, list[Row]]] = {}
        for i, request in enumerate(requests):
            for target in request.targets:
                model = self.model_for(request.source, target)
                assert model is not None  # translate_many passes only supported pairs
                by_model.setdefault(id(model), (model, []))[1].append(
                    model.row(i, request.text, request.source, target)
                )
        results: list[dict[str, TranslationResult]] = [{} for _ in requests]
        for model, rows in by_model.values():
            for row, text in zip(rows, model.run(rows, self.options), strict=True):
                results[row.request][row.target] = TranslationResult(
                    text, route=(requests[row.request].source, row.target)
                )
        return [{t: r[t] for t in request.targets} for r, request in zip(results, requests, strict=True)]

    def warm(self, pairs: Sequence[tuple[str, str]]) -> None:
        """One short translation per (supported) pair, so the first caption does not pay for first allocations."""
        for source, target in pairs:
            self.translate("Hello.", source, [target])
