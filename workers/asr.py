"""The asr stage: SpeechSegment -> [Transcript]. When the guard finds no speech the transcript is empty:
no caption is shown, and it tells the gateway's playout to stop waiting for this segment's speech.

Interim: InterimRequest -> [InterimTranscript], a quick draft of the open segment grown by LocalAgreement
(pipeline/interim.py); nothing when there is nothing to show yet."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from pipeline.audio import median_f0_hz, pcm16_to_float
from pipeline.interim import local_agreement
from pipeline.messages import InterimRequest, InterimTranscript, Message, SpeechSegment
from workers.engines.asr import AsrOptions, Recognizer, load_recognizer
from workers.stage import PermanentError


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

    def process(self, message: Message) -> Sequence[Message]:
        if not isinstance(message, SpeechSegment | InterimRequest):
            raise PermanentError(f"asr takes speech segments, got a {message.kind} message")
        if not message.pcm or len(message.pcm) % 2:
            raise PermanentError(f"broken audio: {len(message.pcm)} bytes is not a whole number of 16-bit samples")
        if self.recognizer is None:
            self.load()
        assert self.recognizer is not None
        if isinstance(message, InterimRequest):
            return self._interim(message)
        transcript = self.recognizer.transcribe(message)
        # Pitch only for words, and only with the speaker's opt-in and the operator's switch both on.
        if transcript.text and message.match_voice and self.options.speaker_pitch:
            f0 = median_f0_hz(pcm16_to_float(message.pcm))
            transcript = dataclasses.replace(transcript, speaker_f0_hz=f0)
        return [transcript.stamped(self.kind)]

    def _interim(self, request: InterimRequest) -> Sequence[Message]:
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


def build_stage(env: Mapping[str, str]) -> AsrStage:
    return AsrStage(AsrOptions.from_env(env))
