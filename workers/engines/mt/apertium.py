"""Apertium, the offline default MT engine (rule-based, Debian packages). One long-lived null-flush pipeline per
language pair, so a caption costs milliseconds instead of the ~0.2 s an `apertium` call spends starting a dozen
processes. Installed pairs are discovered at start; a missing pair is bridged through a third language (en->pt as
en->es->pt)."""

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
from pathlib import Path
from typing import Any

from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import MtOptions, TranslationResult, untranslated

log = logging.getLogger(__name__)

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
        self.answered = False  # the running pipeline has answered once: it is loaded

    @property
    def ready(self) -> bool:
        """A call now would start nothing (a first call starts the pipeline: 0.2-6 s on a busy CPU)."""
        return self.answered and self.proc is not None and self.proc.poll() is None

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
        self.answered = True
        return from_stream(bytes(out[:-1]))

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.answered = False
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
    def __init__(self, options: MtOptions | None = None) -> None:
        options = options or MtOptions()
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

    def ready(self, source: str, target: str) -> bool:
        """Whether translating source->target now starts no pipeline (an unsupported pair starts none)."""
        hops = itertools.pairwise(self.route(source, target))
        return all((pipe := self.pipes.get(hop)) is not None and pipe.ready for hop in hops)

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
