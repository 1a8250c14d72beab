"""The mt stage: Transcript -> one Translation per target language (untranslatable pairs keep the source
text and say so in `note`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.messages import InterimTranscript, InterimTranslation, Message, Transcript, Translation
from workers.engines.mt import (
    MtOptions,
    Request,
    TranslationResult,
    Translator,
    WarmTranslator,
    check_language,
    load_translator,
    translate_all,
    translate_many,
)
from workers.stage import Outcome, PermanentError, batched, single


class MtStage:
    kind = "mt"

    def __init__(self, options: MtOptions | None = None, translator: Translator | None = None) -> None:
        self.options = options or MtOptions()
        self.translator = translator

    @property
    def engine_name(self) -> str:
        return self.translator.name if self.translator else self.options.engine

    def load(self) -> None:
        if self.translator is None:
            self.translator = load_translator(self.options)
        if isinstance(self.translator, WarmTranslator):  # the slow first call happens now, not on a caption
            self.translator.warm([p for p in self.options.warm_pairs if self.translator.supports(*p)])

    def process(self, message: Message) -> Sequence[Message]:
        if isinstance(message, InterimTranscript):
            check_language(message.language)
            if self.translator is None:
                self.load()
            return self._interim(message)
        return single(self.process_batch([message])[0])

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        return batched(messages, checked_transcript, self._translate)

    def _translate(self, transcripts: list[Transcript]) -> list[Outcome]:
        if self.translator is None:
            self.load()
        assert self.translator is not None
        requests = [Request(t.text, t.language, t.targets) for t in transcripts]
        return [
            translations(t, results)
            for t, results in zip(transcripts, translate_many(self.translator, requests), strict=True)
        ]

    def _interim(self, message: InterimTranscript) -> Sequence[Message]:
        """Interim text for the listeners of other languages: only the targets that differ from the source."""
        assert self.translator is not None
        targets = [t for t in message.targets if t != message.language]
        results = translate_all(self.translator, message.text, message.language, targets)
        return [
            InterimTranslation(
                room=message.room, speaker=message.speaker, seq=message.seq, stamps=message.stamps,
                revision=message.revision, source_language=message.language, language=target,
                source_text=message.text, source_committed=message.committed,
                text=results[target].text, note=results[target].note,
            ).stamped(self.kind)
            for target in targets
        ]  # fmt: skip


def checked_transcript(message: Message) -> Transcript:
    if not isinstance(message, Transcript):
        raise PermanentError(f"mt takes transcripts, got a {message.kind} message")
    for code in (message.language, *message.targets):
        check_language(code)
    return message


def translations(message: Transcript, results: dict[str, TranslationResult]) -> list[Message]:
    return [
        Translation(
            room=message.room,
            speaker=message.speaker,
            seq=message.seq,
            stamps=message.stamps,
            source_language=message.language,
            language=target,
            source_text=message.text,
            text=results[target].text,
            note=results[target].note,
            start_sample=message.start_sample,
            end_sample=message.end_sample,
            speaker_f0_hz=message.speaker_f0_hz,
            has_frames=message.has_frames,
        ).stamped(MtStage.kind)
        for target in message.targets
    ]


def build_stage(env: Mapping[str, str]) -> MtStage:
    return MtStage(MtOptions.from_env(env))
