"""`babelroom translate IN --from en --to es --out DIR`: the pipeline's stages on one recording.

IN is a WAV, or a video (.mp4, .webm, .y4m, .mkv, .mov) whose sound track is translated. Writes
DIR/result.json (transcript, translation, per-stage timings in seconds, engine names), DIR/speech.wav
(the translated speech, fitted to the input's duration) and DIR/captions.vtt. For a video also
DIR/video.mp4: the speaker's video with the translated speech, lip-synced, and in result.json
`lipsync: {corr, lag_frames, ...}`, the sync measured on the output (workers/lipsync_metric.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.audio import Samples, float_to_pcm16, pcm16_to_float, read_wav, write_wav
from pipeline.messages import SAMPLE_RATE, Message, SpeechSegment, SynthesizedSpeech, Transcript, Translation
from pipeline.subtitles import Cue, vtt
from pipeline.video import Video, VideoError, is_video, read_video, write_mp4
from workers.asr import AsrStage
from workers.engines.asr.base import AsrOptions
from workers.engines.lipsync.base import LipSyncOptions
from workers.engines.lipsync.registry import load_lipsyncer
from workers.engines.mt.base import MtOptions, check_language
from workers.engines.tts.base import TtsOptions
from workers.lipsync_metric import measure_sync
from workers.mt import MtStage
from workers.tts import TtsStage

CAPTION_CHARS = 42  # at most this many characters on screen at once: a caption line people can read
T = TypeVar("T")


def translate_file(path: Path, source: str, target: str, out_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    check_language(source)
    check_language(target)
    video = read_video(path) if is_video(path) else None
    samples = video.audio if video else read_wav(path)
    if samples.size == 0:
        raise VideoError(f"{path} has no sound to translate")
    timings: dict[str, float] = {}
    asr, mt, tts = (
        AsrStage(AsrOptions.from_env(env)),
        MtStage(MtOptions.from_env(env)),
        TtsStage(TtsOptions.from_env(env)),
    )
    for stage in (asr, mt, tts):
        timed(timings, f"{stage.kind}_load", stage.load)
    segment = SpeechSegment(
        room="file", speaker=path.stem, seq=0, language=source, targets=(target,),
        start_sample=0, end_sample=samples.size, pcm=float_to_pcm16(samples),
    )  # fmt: skip
    transcript = first(timed(timings, "asr", lambda: asr.process(segment.stamped("segment"))), Transcript)
    translation = first(timed(timings, "mt", lambda: mt.process(transcript)), Translation) if transcript else None
    speech = first(timed(timings, "tts", lambda: tts.process(translation)), SynthesizedSpeech) if translation else None
    out_dir.mkdir(parents=True, exist_ok=True)
    audio = pcm16_to_float(speech.pcm) if speech else np.zeros(0, dtype=np.float32)
    write_wav(out_dir / "speech.wav", audio, SAMPLE_RATE)
    (out_dir / "captions.vtt").write_text(vtt(caption_cues(translation.text if translation else "", speech)))
    result = {
        "input": str(path),
        "input_s": samples.size / SAMPLE_RATE,
        "source": source,
        "target": target,
        "transcript": transcript.text if transcript else "",
        "words": [[w.text, w.start_s, w.end_s] for w in transcript.words] if transcript else [],
        "translation": translation.text if translation else "",
        "note": translation.note if translation else "",
        "speech_s": audio.size / SAMPLE_RATE,
        "engines": {"asr": asr.engine_name, "mt": mt.engine_name, "tts": tts.engine_name(target)},
    }
    if video is not None:
        result |= dub(video, speech, audio, out_dir, env, timings)
    result["timings"] = {k: round(v, 4) for k, v in timings.items()}
    (out_dir / "result.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return result


def dub(
    video: Video,
    speech: SynthesizedSpeech | None,
    audio: Samples,
    out_dir: Path,
    env: Mapping[str, str],
    timings: dict[str, float],
) -> dict[str, Any]:
    """DIR/video.mp4 with the translated speech and the lip-synced face; nothing voiced, the original video."""
    if speech is None or audio.size == 0:
        write_mp4(out_dir / "video.mp4", video.frames, video.fps, video.audio)
        return {"video": {"frames": len(video.frames), "fps": video.fps}, "lipsync": None}
    options = LipSyncOptions.from_env(env)
    syncer = timed(timings, "lipsync_load", lambda: load_lipsyncer(options))
    synced = timed(timings, "lipsync", lambda: syncer.sync(speech, video.frames, video.times_s))
    write_mp4(out_dir / "video.mp4", synced.frames, synced.fps, audio)
    score = timed(timings, "lipsync_measure", lambda: measure_sync(synced.frames, synced.fps, audio, SAMPLE_RATE))
    height, width = synced.frames[0].shape[:2]
    return {
        "video": {"frames": len(synced.frames), "fps": round(synced.fps, 3), "width": width, "height": height},
        "lipsync": {**score.as_dict(), "engine": syncer.name, "synced_frames": synced.synced},
    }


def caption_cues(text: str, speech: SynthesizedSpeech | None) -> list[Cue]:
    """The translation as cues of at most CAPTION_CHARS, spread over the speech by their length (from the first
    phoneme to the last when the engine gave timings); written as the meeting transcript is (pipeline/subtitles.py)."""
    if not text.strip() or speech is None:
        return []
    end = len(speech.pcm) / 2 / speech.sample_rate
    start, end = (speech.phonemes[0].start_s, speech.phonemes[-1].end_s) if speech.phonemes else (0.0, end)
    chunks = caption_chunks(text)
    total = sum(len(c) for c in chunks)
    cues, at = [], start
    for chunk in chunks:
        until = at + (end - start) * len(chunk) / total
        cues.append(Cue(at, until, chunk))
        at = until
    return cues


def caption_chunks(text: str) -> list[str]:
    chunks: list[str] = []
    for word in text.split():
        if chunks and len(chunks[-1]) + 1 + len(word) <= CAPTION_CHARS and not chunks[-1].endswith((".", "?", "!")):
            chunks[-1] += f" {word}"
        else:
            chunks.append(word)
    return chunks


def timed(timings: dict[str, float], name: str, run: Callable[[], T]) -> T:
    started = time.perf_counter()
    out = run()
    timings[name] = time.perf_counter() - started
    return out


M = TypeVar("M", bound=Message)


def first(messages: Any, kind: type[M]) -> M | None:
    """The stage's first output, when it is of the expected kind (a stage may answer with nothing)."""
    return next((m for m in messages or () if isinstance(m, kind)), None)
