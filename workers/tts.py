"""The tts stage: Translation -> [SynthesizedSpeech] with its phoneme timings, fitted to the source segment's
duration and, when the speaker opted in (speaker_f0_hz > 0), moved toward the speaker's pitch.

An untranslated caption (the pair is unsupported: note set, text still in the source language) and a
language no voice speaks get empty speech: the caption is still shown, and playout does not wait."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.audio import float_to_pcm16
from pipeline.messages import SAMPLE_RATE, Message, SynthesizedSpeech, Translation
from workers.engines.mt.base import check_language
from workers.engines.tts.base import Audio, TtsOptions
from workers.engines.tts.registry import VoiceRouter
from workers.engines.tts.render import render
from workers.stage import Outcome, PermanentError, batched, single

log = logging.getLogger(__name__)

SILENCE = Audio(np.zeros(0, dtype=np.float32), SAMPLE_RATE)  # nothing to voice: playout stops waiting


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
        return single(self.process_batch([message])[0])

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        return batched(messages, checked_translation, self._speak)

    def _speak(self, translations: list[Translation]) -> list[Outcome]:
        """Voice what needs a voice (in one batch per language where the voice batches), then fit each to its
        segment. Empty speech is still sent: it tells the gateway's playout not to wait for this segment."""
        if self.voices is None:
            self.load()
        assert self.voices is not None
        voiced = [m for m in translations if self._needs_voice(m)]
        audio = self.voices.synthesize_batch([m.text for m in voiced], [m.language for m in voiced])
        by_message = {id(m): a for m, a in zip(voiced, audio, strict=True)}
        outcomes: list[Outcome] = []
        for message in translations:
            result = by_message.get(id(message))
            if isinstance(result, Exception):
                outcomes.append(result)
                continue
            fitted = SILENCE if result is None else self._fitted(result, message)
            outcomes.append([speech(message, fitted).stamped(self.kind)])
        return outcomes

    def _needs_voice(self, message: Translation) -> bool:
        """False for nothing to say, an untranslated caption, or a language no voice speaks."""
        assert self.voices is not None
        if not message.service.speech:  # the gateway's overload policy turned translated speech off
            return False
        if not message.text.strip() or (message.note and message.text == message.source_text):
            return False
        if not self.voices.supports(message.language):
            log.warning("no voice for %s; caption only (%s)", message.language, message.log_context)
            return False
        return True

    def _fitted(self, audio: Audio, message: Translation) -> Audio:
        """The speech fitted to the source segment's length, its phoneme timings moved with it."""
        target_s = max(0, message.end_sample - message.start_sample) / SAMPLE_RATE
        fitted, _ = render(audio, target_s, message.speaker_f0_hz, self.options)
        return fitted


def checked_translation(message: Message) -> Translation:
    if not isinstance(message, Translation):
        raise PermanentError(f"tts takes translations, got a {message.kind} message")
    check_language(message.language)
    return message


def speech(message: Translation, audio: Audio) -> SynthesizedSpeech:
    return SynthesizedSpeech(
        room=message.room,
        speaker=message.speaker,
        seq=message.seq,
        stamps=message.stamps,
        language=message.language,
        text=message.text,
        source_text=message.source_text,
        sample_rate=SAMPLE_RATE,
        pcm=float_to_pcm16(audio.samples),
        start_sample=message.start_sample,
        end_sample=message.end_sample,
        phonemes=audio.phonemes,
        has_frames=message.has_frames,
    )


def build_stage(env: Mapping[str, str]) -> TtsStage:
    return TtsStage(TtsOptions.from_env(env))
