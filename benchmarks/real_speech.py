"""Real human speech from Debian packages, with transcripts: the corpus the real-speech quality tests and
`babelroom bench real-speech` recognise (no synthetic voice).

- en: LibriVox read speech (`pocketsphinx-testdata`, 16 kHz, the package's own transcription) and studio IVR
  prompts (`asterisk-core-sounds-en-wav`, 8 kHz, transcripts from `asterisk-core-sounds-en`);
- es: Colombian Spanish prompts (`asterisk-prompt-es-co`, GSM 8 kHz);
- fr: Canadian French prompts (`asterisk-core-sounds-fr-wav`, 8 kHz).

The es and fr packages ship no transcripts: tests/data/real_speech.json holds ours, written by listening to
the meaning of each prompt (the English prompt of the same name) and checking Whisper's full-window drafts
word by word; where a draft and the phrasing a prompt needs differed, the phrasing won."""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from benchmarks.asr_context import word_errors
from pipeline.audio import Samples, float_to_pcm16, read_wav, resample, write_wav
from pipeline.messages import SAMPLE_RATE, SpeechSegment
from workers.engines.asr.base import FIT, FULL, AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer

SOUNDS = Path("/usr/share/asterisk/sounds")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
EN_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "real_speech.json"
PACKAGES = (
    "pocketsphinx-testdata asterisk-core-sounds-en asterisk-core-sounds-en-wav asterisk-prompt-es-co "
    "asterisk-core-sounds-fr-wav"
)
PROMPT_DIRS = {"en": "en_US_f_Allison", "es": "es", "fr": "fr_CA_f_June"}
GSM_RATE = 8000


@dataclass(frozen=True)
class Clip:
    language: str
    name: str
    reference: str
    audio: Samples  # 16 kHz mono

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    def segment(self, seq: int = 0) -> SpeechSegment:
        """The whole clip as one segment, as `babelroom translate` recognises a file."""
        return SpeechSegment(
            room="real", speaker="real", seq=seq, language=self.language,
            start_sample=0, end_sample=self.audio.size, pcm=float_to_pcm16(self.audio),
        )  # fmt: skip


def clips(languages: Sequence[str] = ("en", "es", "fr")) -> list[Clip]:
    """The corpus's clips (tests/data/real_speech.json) in these languages; a missing package is an error
    that names the packages to install."""
    corpus = json.loads(CORPUS.read_text())
    try:
        en_prompts = prompt_transcripts() if "en" in languages else {}
        out = [librivox_clip(name) for name in corpus["librivox"]] if "en" in languages else []
        out += [prompt_clip("en", name, en_prompts[name]) for name in corpus["en"] if "en" in languages]
        out += [prompt_clip(lang, name, text) for lang in ("es", "fr") if lang in languages
                for name, text in corpus[lang].items()]  # fmt: skip
    except (FileNotFoundError, sf.LibsndfileError) as exc:
        raise FileNotFoundError(f"real speech is missing ({exc}): apt-get install {PACKAGES}") from exc
    return out


def prompt_transcripts() -> dict[str, str]:
    """name -> text from core-sounds-en.txt.gz ("agent-pass: Please enter your password ...")."""
    with gzip.open(EN_TRANSCRIPTS, "rt") as lines:
        pairs = (line.split(": ", 1) for line in lines if ": " in line and not line.startswith(";"))
        return {name.strip(): text.strip() for name, text in pairs}


def librivox_clip(name: str) -> Clip:
    """A LibriVox sentence and its line of the package's transcription ("<s> text </s> (name)")."""
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        if match := re.fullmatch(rf"<s> (.*) </s> \({re.escape(name)}\)", line.strip()):
            return Clip("en", name, match[1], read_wav(LIBRIVOX / f"{name}.wav"))
    raise FileNotFoundError(f"{name} is not in {LIBRIVOX / 'transcription'}")


def prompt_clip(language: str, name: str, reference: str) -> Clip:
    folder = SOUNDS / PROMPT_DIRS[language]
    wav, gsm = folder / f"{name}.wav", folder / f"{name}.gsm"
    if wav.exists():
        return Clip(language, name, reference, read_wav(wav))
    data, _ = sf.read(str(gsm), format="RAW", subtype="GSM610", samplerate=GSM_RATE, channels=1, dtype="float32")
    return Clip(language, name, reference, resample(data, GSM_RATE, SAMPLE_RATE))


def write_clip(clip: Clip, path: Path) -> Path:
    """The clip as a 16 kHz WAV, for `babelroom translate`."""
    write_wav(path, clip.audio, SAMPLE_RATE)
    return path


@dataclass(frozen=True)
class Heard:
    clip: Clip
    text: str
    seconds: float  # recognition time

    @property
    def errors(self) -> tuple[int, int]:
        return word_errors(self.clip.reference, self.text)


def recognise(recognizer: FasterWhisperRecognizer, corpus: Sequence[Clip]) -> list[Heard]:
    heard = []
    for seq, clip in enumerate(corpus):
        start = time.perf_counter()
        text = recognizer.transcribe(clip.segment(seq)).text
        heard.append(Heard(clip, text, time.perf_counter() - start))
    return heard


def wer_by_language(heard: Sequence[Heard]) -> dict[str, float]:
    totals: dict[str, tuple[int, int]] = {}
    for h in heard:
        edits, words = totals.get(h.clip.language, (0, 0))
        e, n = h.errors
        totals[h.clip.language] = (edits + e, words + n)
    return {language: round(edits / words, 3) for language, (edits, words) in totals.items()}


def tau(heard: Sequence[Heard]) -> float:
    """Recognition time over audio time, all clips together."""
    return sum(h.seconds for h in heard) / sum(h.clip.seconds for h in heard)


def run(
    out_dir: Path | None = None, models: Sequence[str] = ("base",), contexts: Sequence[str] = (FIT, FULL)
) -> list[dict[str, object]]:
    """WER per language and tau for each model and final-pass context, printed, returned and written to
    OUT_DIR/real_speech.json when given."""
    corpus, rows = clips(), []
    for model in models:
        for context in contexts:
            recognizer = FasterWhisperRecognizer(AsrOptions(model=model, audio_context=context))
            recognise(recognizer, corpus[:1])  # warm-up
            heard = recognise(recognizer, corpus)
            for h in heard:
                print(f"  [{model} {context}] {h.clip.language} {h.clip.name}: {h.errors[0]}/{h.errors[1]} {h.text!r}")
            row = {"model": model, "context": context, "wer": wer_by_language(heard), "tau": round(tau(heard), 3)}
            print(json.dumps(row))
            rows.append(row)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "real_speech.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="base", help="comma-separated ASR models (base, small, tiny.en, a dir)")
    parser.add_argument("--contexts", default=f"{FIT},{FULL}", help="final-pass contexts: fit, full")
    parser.add_argument("--out", type=Path, help="a folder for real_speech.json")
    args = parser.parse_args(argv)
    run(args.out, args.models.split(","), args.contexts.split(","))


if __name__ == "__main__":
    main()
