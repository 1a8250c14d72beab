"""Machine translation engines behind one protocol: `Translator.translate(text, source, targets)`, batched
across the target languages of one utterance.

- `ApertiumTranslator`: the offline default (rule-based, Debian packages). One long-lived null-flush pipeline
  per language pair, so a caption costs milliseconds instead of the ~0.2 s an `apertium` call spends
  starting a dozen processes. Installed pairs are discovered at start; a missing pair is bridged through a
  third language (en->pt as en->es->pt).
- `TransformersTranslator`: NLLB, M2M100 or Marian on torch (a local dir or hub id), all targets in one batch.

A pair no engine can do is not an error: the caption comes back in the source language with a note.
An unknown language code is: `PermanentError`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.config import env_flag
from workers.engines.asr import EngineUnavailable, import_torch_transformers, torch_device
from workers.stage import PermanentError

log = logging.getLogger(__name__)

APERTIUM, TRANSFORMERS = "apertium", "transformers"
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
# Apertium names pairs with ISO 639-3 or 639-1 codes; map the 3-letter ones participants would not use.
APERTIUM_TO_ISO1 = {
    "eng": "en", "spa": "es", "cat": "ca", "glg": "gl", "por": "pt", "fra": "fr", "deu": "de", "ita": "it",
    "oci": "oc", "arg": "an", "eus": "eu", "nld": "nl", "afr": "af", "swe": "sv", "dan": "da", "nob": "nb",
    "nno": "nn", "isl": "is", "ron": "ro", "bel": "be", "rus": "ru", "ukr": "uk", "pol": "pl", "ces": "cs",
    "slk": "sk", "slv": "sl", "mlt": "mt", "cym": "cy", "bre": "br", "gle": "ga", "gla": "gd", "epo": "eo",
    "ind": "id", "msa": "ms", "kaz": "kk", "tat": "tt", "kir": "ky", "uzb": "uz", "tur": "tr", "aze": "az",
    "ara": "ar", "heb": "he", "hin": "hi", "urd": "ur", "ell": "el", "lat": "la", "srd": "sc", "cos": "co",
    "hye": "hy", "fao": "fo", "sme": "se", "fin": "fi", "est": "et", "lit": "lt", "lav": "lv", "mkd": "mk",
    "bul": "bg", "sqi": "sq",
}  # fmt: skip
# NLLB-200 names languages by FLORES-200 codes.
NLLB_CODES = {
    "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn", "pt": "por_Latn",
    "ca": "cat_Latn", "gl": "glg_Latn", "eu": "eus_Latn", "nl": "nld_Latn", "pl": "pol_Latn", "ru": "rus_Cyrl",
    "uk": "ukr_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan", "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva",
    "tr": "tur_Latn", "sv": "swe_Latn", "da": "dan_Latn", "fi": "fin_Latn", "el": "ell_Grek", "cs": "ces_Latn",
    "ro": "ron_Latn", "hu": "hun_Latn", "he": "heb_Hebr", "id": "ind_Latn", "vi": "vie_Latn", "th": "tha_Thai",
    "bg": "bul_Cyrl", "nb": "nob_Latn", "sk": "slk_Latn", "hr": "hrv_Latn", "sr": "srp_Cyrl", "fa": "pes_Arab",
}  # fmt: skip


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
    model: str = ""  # transformers: a local dir or hub id (NLLB, M2M100, Marian)
    device: str = DEFAULT_DEVICE
    modes_dirs: tuple[str, ...] = DEFAULT_MODES_DIRS
    max_hops: int = DEFAULT_MAX_HOPS
    warm_pairs: tuple[tuple[str, str], ...] = DEFAULT_WARM_PAIRS
    timeout_s: float = DEFAULT_TIMEOUT_S
    mark_unknown: bool = DEFAULT_MARK_UNKNOWN
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    allow_download: bool = False

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


def load_translator(options: MtOptions) -> Translator:
    if options.engine == APERTIUM:
        return ApertiumTranslator(options)
    if options.engine == TRANSFORMERS:
        return TransformersTranslator(options)
    raise ValueError(f"unknown MT engine {options.engine!r}: use {APERTIUM!r} or {TRANSFORMERS!r}")


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


# --- Apertium ---------------------------------------------------------------------------------------------


def discover_pairs(modes_dirs: Sequence[str]) -> dict[tuple[str, str], Path]:
    """(source, target) in ISO 639-1 -> the pair's .mode file. Variants (eng-cat_valencia) and other modes
    (eco-es-fr) are skipped: a meeting declares plain languages."""
    pairs: dict[tuple[str, str], Path] = {}
    for d in modes_dirs:
        for mode in sorted(Path(d).glob("*.mode")):
            match = re.fullmatch(r"([a-z]{2,3})-([a-z]{2,3})", mode.stem)
            if match:
                src, tgt = (APERTIUM_TO_ISO1.get(c, c) for c in match.groups())
                pairs.setdefault((src, tgt), mode)
    return pairs


def find_route(pairs: Mapping[tuple[str, str], Any], source: str, target: str, max_hops: int) -> tuple[str, ...]:
    """Shortest language path from source to target over installed pairs; () when none within max_hops."""
    paths: deque[tuple[str, ...]] = deque([(source,)])
    seen = {source}
    while paths:
        path = paths.popleft()
        if len(path) > max_hops:
            continue
        for src, tgt in sorted(pairs):
            if src == path[-1] and tgt not in seen:
                if tgt == target:
                    return (*path, tgt)
                seen.add(tgt)
                paths.append((*path, tgt))
    return ()


_ESCAPE = re.compile(r"([\\/\[\]^$@<>{}])")
_SUPERBLANK = re.compile(r"(?<!\\)\[(?:\\.|[^\]\\])*\]")
_UNESCAPE = re.compile(r"\\(.)")


def to_stream(text: str) -> bytes:
    """Plain text as an Apertium stream: reserved characters escaped, ending in a blank so the last word is
    released, then the NUL that makes every program in the pipeline flush."""
    flat = " ".join(text.replace("\0", " ").split())
    return (_ESCAPE.sub(r"\\\1", flat) + "[]\0").encode()


def from_stream(data: bytes) -> str:
    return _UNESCAPE.sub(r"\1", _SUPERBLANK.sub("", data.decode(errors="replace"))).strip()


MAX_COMPLAINTS_REMEMBERED = 100  # distinct stderr lines per pipeline logged as warnings (bounded memory)


class ApertiumPipe:
    """One pair's pipeline kept running in null-flush mode: a NUL ends each request and each answer."""

    def __init__(self, mode: Path, mark_unknown: bool, timeout_s: float, label: str) -> None:
        self.label = label  # the pair ("en->ca"), as the worker's log names it
        script = subprocess.run(
            ["apertium-wblank-mode", "-z", str(mode)], capture_output=True, text=True, check=True
        ).stdout.strip()
        # $1: generator mode (-g marks unknown words, -n does not); $2: tagger option, empty as `apertium` does.
        self.argv = ["bash", "-c", script, "apertium-pipe", "-g" if mark_unknown else "-n", ""]
        self.timeout_s = timeout_s
        self.lock = threading.Lock()  # one request in flight per pipe; the answers come back in order
        self.proc: subprocess.Popen[bytes] | None = None

    def translate(self, text: str) -> str:
        with self.lock:
            try:
                return self._round_trip(text)
            except (BrokenPipeError, EOFError):  # the pipeline died (killed, OOM): one fresh start, one retry
                self.close()
                return self._round_trip(text)

    def _round_trip(self, text: str) -> str:
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(to_stream(text))
        proc.stdin.flush()
        out = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not out.endswith(b"\0"):
                if not sel.select(self.timeout_s):
                    self.close()
                    raise TimeoutError(f"apertium gave no answer within {self.timeout_s} s")
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("apertium pipeline exited")
                out += chunk
        return from_stream(bytes(out[:-1]))

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            # Own process group, so close() ends every program of the pipeline, not just bash.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            assert self.proc.stderr is not None
            threading.Thread(target=self._log_complaints, args=(self.proc.stderr,), daemon=True).start()
        return self.proc

    def _log_complaints(self, stderr: Any) -> None:
        """What the pipeline's programs print, in the worker's log under the pair's name. Some pairs' rules
        complain about some sentences on every run and translate them anyway (eng-cat's "index > limit"), so
        each distinct line is a WARNING once per pipeline and its repeats are DEBUG. Ends at the pipe's EOF."""
        seen: set[str] = set()
        with stderr:
            for raw in iter(stderr.readline, b""):
                line = raw.decode(errors="replace").strip()
                if line in seen:
                    log.debug("apertium %s: %s", self.label, line)
                elif line:
                    if len(seen) < MAX_COMPLAINTS_REMEMBERED:
                        seen.add(line)
                    log.warning("apertium %s: %s (repeats of this line are logged at debug level)", self.label, line)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None


class ApertiumTranslator:
    def __init__(self, options: MtOptions = MtOptions()) -> None:
        if shutil.which("apertium-wblank-mode") is None or shutil.which("lt-proc") is None:
            raise EngineUnavailable("Apertium is not installed: apt-get install apertium apertium-eng-spa")
        self.options = options
        self.pairs = discover_pairs(options.modes_dirs)
        if not self.pairs:
            raise EngineUnavailable(f"no Apertium pairs in {options.modes_dirs}: apt-get install apertium-eng-spa")
        self.pipes: dict[tuple[str, str], ApertiumPipe] = {}
        self.pipes_lock = threading.Lock()
        self.name = "apertium"

    def route(self, source: str, target: str) -> tuple[str, ...]:
        return find_route(self.pairs, source, target, self.options.max_hops)

    def supports(self, source: str, target: str) -> bool:
        return bool(self.route(source, target))

    def translate(self, text: str, source: str, targets: Sequence[str]) -> dict[str, TranslationResult]:
        # Targets that share a first hop (en->es, en->pt via es) translate that hop once.
        done: dict[tuple[str, ...], str] = {(source,): text}
        results = {}
        for target in targets:
            route = self.route(source, target)
            if not route:
                results[target] = untranslated(text, source, target)
                continue
            for i in range(1, len(route)):
                if route[: i + 1] not in done:
                    done[route[: i + 1]] = self._pipe(route[i - 1], route[i]).translate(done[route[:i]])
            results[target] = TranslationResult(done[route], route=route)
        return results

    def _pipe(self, source: str, target: str) -> ApertiumPipe:
        with self.pipes_lock:
            if (source, target) not in self.pipes:
                mode = self.pairs[(source, target)]
                self.pipes[(source, target)] = ApertiumPipe(
                    mode, self.options.mark_unknown, self.options.timeout_s, f"{source}->{target}"
                )
            return self.pipes[(source, target)]

    def warm(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Start these pairs' pipelines now rather than on their first caption."""
        for source, target in pairs:
            route = self.route(source, target)
            for a, b in itertools.pairwise(route):
                self._pipe(a, b).translate("")

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.close()


# --- torch / transformers ---------------------------------------------------------------------------------


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
        token = {"nllb": NLLB_CODES.get(code), "m2m100": f"__{code}__"}.get(self.family)
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


def model_family(model_type: str, tokenizer_class: str) -> str:
    if model_type == "marian":
        return "marian"
    if "nllb" in tokenizer_class.lower():
        return "nllb"
    if model_type == "m2m_100":
        return "m2m100"
    raise EngineUnavailable(f"unsupported translation model type {model_type!r}: use NLLB, M2M100 or Marian")


def marian_pair(model: str) -> tuple[str, str] | None:
    """opus-mt-en-es -> ("en", "es"); None for a multi-target model (opus-mt-en-ROMANCE) or an unknown name."""
    match = re.search(r"opus-mt-([a-z]{2})-([a-z]{2})(?:$|[^a-zA-Z])", Path(model).name)
    return (match.group(1), match.group(2)) if match else None
