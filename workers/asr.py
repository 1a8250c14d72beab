"""The asr stage: SpeechSegment -> [Transcript]. When the guard finds no speech the transcript is empty:
no caption is shown, and it tells the gateway's playout to stop waiting for this segment's speech.

Interim: InterimRequest -> [InterimTranscript], a quick draft of the open segment grown by LocalAgreement
(pipeline/interim.py); nothing when there is nothing to show yet."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TypeVar

from pipeline.audio import median_f0_hz, pcm16_to_float
from pipeline.interim import local_agreement
from pipeline.messages import InterimRequest, InterimTranscript, Message, SpeechSegment, Transcript
from workers.engines.asr.base import AsrOptions, Recognizer, WarmRecognizer, transcribe_all
from workers.engines.asr.registry import load_recognizer
from workers.stage import Outcome, PermanentError, batched, single


class AsrStage:
    kind = "asr"

    def __init__(self, options: AsrOptions | None = None, recognizer: Recognizer | None = None) -> None:
        self.options = options or AsrOptions()
        self.recognizer = recognizer  # injected: tests and benchmarks share one loaded model

    @property
    def engine_name(self) -> str:
        return self.recognizer.name if self.recognizer else self.options.engine

    def load(self) -> None:
        if self.recognizer is None:
            self.recognizer = load_recognizer(self.options)
        if isinstance(self.recognizer, WarmRecognizer):
            self.recognizer.warm()  # before the worker says it is ready: the first caption pays no first-call cost

    def process(self, message: Message) -> Sequence[Message]:
        if isinstance(message, InterimRequest):
            return self._interim(checked_audio(message))
        return single(self.process_batch([message])[0])

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        return batched(messages, checked_segment, self._transcribe)

    def _transcribe(self, segments: list[SpeechSegment]) -> list[Outcome]:
        if self.recognizer is None:
            self.load()
        assert self.recognizer is not None
        transcripts = transcribe_all(self.recognizer, segments)
        return [
            t if isinstance(t, Exception) else [self._with_pitch(t, s).stamped(self.kind)]
            for s, t in zip(segments, transcripts, strict=True)
        ]

    def _with_pitch(self, transcript: Transcript, segment: SpeechSegment) -> Transcript:
        """Pitch only for words, and only with the speaker's opt-in and the operator's switch both on; the
        segment's frames (has_frames) travel on for lip-sync."""
        transcript = dataclasses.replace(transcript, has_frames=segment.has_frames)
        if not (transcript.text and segment.match_voice and self.options.speaker_pitch):
            return transcript
        return dataclasses.replace(transcript, speaker_f0_hz=median_f0_hz(pcm16_to_float(segment.pcm)))

    def _interim(self, request: InterimRequest) -> Sequence[Message]:
        if self.recognizer is None:
            self.load()
        assert self.recognizer is not None
        audio = SpeechSegment(
            room=request.room, speaker=request.speaker, seq=request.seq, language=request.language,
            start_sample=request.start_sample, end_sample=request.end_sample, pcm=request.pcm,
        )  # fmt: skip
        hypothesis = self.recognizer.draft(audio, request.committed)
        agreement = local_agreement(request.previous, hypothesis, request.committed)
        if not agreement.text:
            return []
        interim = InterimTranscript(
            room=request.room, speaker=request.speaker, seq=request.seq, stamps=request.stamps,
            revision=request.revision, language=request.language, targets=request.targets,
            text=agreement.text, committed=agreement.committed, end_sample=request.end_sample,
        )  # fmt: skip
        return [interim.stamped(self.kind)]


Audible = TypeVar("Audible", SpeechSegment, InterimRequest)


def checked_segment(message: Message) -> SpeechSegment:
    if not isinstance(message, SpeechSegment):
        raise PermanentError(f"asr takes speech segments, got a {message.kind} message")
    return checked_audio(message)


def checked_audio(message: Audible) -> Audible:
    if not message.pcm or len(message.pcm) % 2:
        raise PermanentError(f"broken audio: {len(message.pcm)} bytes is not a whole number of 16-bit samples")
    return message


def build_stage(env: Mapping[str, str]) -> AsrStage:
    return AsrStage(AsrOptions.from_env(env))
