"""`babelroom translate IN.wav --from en --to es --out DIR`: the asr, mt and tts stages on one file.

Writes DIR/result.json (transcript, translation, per-stage timings in seconds, engine names) and
DIR/speech.wav (the translated speech, fitted to the input's duration)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import float_to_pcm16, pcm16_to_float, read_wav, write_wav
from pipeline.messages import SAMPLE_RATE, SpeechSegment, SynthesizedSpeech, Transcript, Translation
from workers.asr import AsrStage
from workers.engines.asr import AsrOptions
from workers.engines.mt import MtOptions, check_language
from workers.engines.tts import TtsOptions
from workers.mt import MtStage
from workers.tts import TtsStage


def translate_file(in_wav: Path, source: str, target: str, out_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    check_language(source)
    check_language(target)
    asr, mt, tts = (
        AsrStage(AsrOptions.from_env(env)),
        MtStage(MtOptions.from_env(env)),
        TtsStage(TtsOptions.from_env(env)),
    )
    timings: dict[str, float] = {}
    for stage in (asr, mt, tts):
        started = time.perf_counter()
        stage.load()
        timings[f"{stage.kind}_load"] = time.perf_counter() - started
    samples = read_wav(in_wav)
    segment = SpeechSegment(
        room="file", speaker=in_wav.stem, seq=0, language=source, targets=(target,),
        start_sample=0, end_sample=samples.size, pcm=float_to_pcm16(samples),
    )  # fmt: skip

    def timed(kind: str, run: Any) -> Any:
        started = time.perf_counter()
        out = run()
        timings[kind] = time.perf_counter() - started
        return out[0] if out else None

    transcript: Transcript | None = timed("asr", lambda: asr.process(segment.stamped("segment")))
    translation: Translation | None = timed("mt", lambda: mt.process(transcript)) if transcript else None
    speech: SynthesizedSpeech | None = timed("tts", lambda: tts.process(translation)) if translation else None
    out_dir.mkdir(parents=True, exist_ok=True)
    audio = pcm16_to_float(speech.pcm) if speech else np.zeros(0, dtype=np.float32)
    write_wav(out_dir / "speech.wav", audio, SAMPLE_RATE)
    result = {
        "input": str(in_wav),
        "input_s": samples.size / SAMPLE_RATE,
        "source": source,
        "target": target,
        "transcript": transcript.text if transcript else "",
        "words": [[w.text, w.start_s, w.end_s] for w in transcript.words] if transcript else [],
        "translation": translation.text if translation else "",
        "note": translation.note if translation else "",
        "speech_s": audio.size / SAMPLE_RATE,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "engines": {"asr": asr.engine_name, "mt": mt.engine_name, "tts": tts.engine_name(target)},
    }
    (out_dir / "result.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return result
