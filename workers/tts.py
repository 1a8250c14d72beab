"""The tts stage: Translation -> [SynthesizedSpeech], fitted to the source segment's duration and, when the
speaker opted in (speaker_f0_hz > 0), moved toward the speaker's pitch.

An untranslated caption (the pair is unsupported: note set, text still in the source language) and a
language no voice speaks get empty speech: the caption is still shown, and playout does not wait."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.audio import Samples, float_to_pcm16
from pipeline.messages import SAMPLE_RATE, Message, SynthesizedSpeech, Translation
from workers.engines.mt import check_language
from workers.engines.tts import TtsOptions, VoiceRouter, render
from workers.stage import PermanentError

log = logging.getLogger(__name__)


class TtsStage:
    kind = "tts"

    def __init__(self, options: TtsOptions | None = None, voices: VoiceRouter | None = None) -> None:
        self.options = options or TtsOptions()
        self.voices = voices

    def load(self) -> None:
        if self.voices is None:
            self.voices = VoiceRouter(self.options)
            self.voices.load()

    def engine_name(self, language: str) -> str:
        return self.voices.engine_name(language) if self.voices else ""

    def process(self, message: Message) -> Sequence[Message]:
        if not isinstance(message, Translation):
            raise PermanentError(f"tts takes translations, got a {message.kind} message")
        check_language(message.language)
        if self.voices is None:
            self.load()
        assert self.voices is not None
        samples = self._voice(message)
        speech = SynthesizedSpeech(
            room=message.room,
            speaker=message.speaker,
            seq=message.seq,
            stamps=message.stamps,
            language=message.language,
            text=message.text,
            source_text=message.source_text,
            sample_rate=SAMPLE_RATE,
            pcm=float_to_pcm16(samples),
            start_sample=message.start_sample,
            end_sample=message.end_sample,
        )
        return [speech.stamped(self.kind)]

    def _voice(self, message: Translation) -> Samples:
        """The fitted speech, or no samples when there is nothing to voice. Empty speech is still sent:
        it tells the gateway's playout not to wait for this segment."""
        assert self.voices is not None
        if not message.service.speech:  # the gateway's overload policy turned translated speech off
            return np.zeros(0, dtype=np.float32)
        if not message.text.strip() or (message.note and message.text == message.source_text):
            return np.zeros(0, dtype=np.float32)
        if not self.voices.supports(message.language):
            log.warning("no voice for %s; caption only (%s)", message.language, message.log_context)
            return np.zeros(0, dtype=np.float32)
        audio = self.voices.synthesize(message.text, message.language)
        target_s = max(0, message.end_sample - message.start_sample) / SAMPLE_RATE
        samples, _ = render(audio, target_s, message.speaker_f0_hz, self.options)
        return samples


def build_stage(env: Mapping[str, str]) -> TtsStage:
    return TtsStage(TtsOptions.from_env(env))
