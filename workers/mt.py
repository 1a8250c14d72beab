"""The mt stage: Transcript -> one Translation per target language (untranslatable pairs keep the source
text and say so in `note`).

Interim: InterimTranscript -> one InterimTranslation per target language whose engine is ready. An engine
that starts each language pair separately and slowly (a PairStartingTranslator: Apertium, a pipeline per pair,
0.2-6 s on 2 busy cores) starts a cold pair in the background instead, so one cold language never holds back
the others' interim captions; its own come with the next interim once it is up. A WarmUp hint from the
gateway (the pairs a room will need, sent as people join) starts them before anyone speaks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline.messages import InterimTranscript, InterimTranslation, Message, Transcript, Translation, WarmUp
from workers.engines.mt.base import (
    MtOptions,
    PairStartingTranslator,
    Request,
    TranslationResult,
    Translator,
    WarmTranslator,
    check_language,
    translate_all,
    translate_many,
)
from workers.engines.mt.registry import load_translator
from workers.stage import Outcome, PermanentError, batched, single

log = logging.getLogger(__name__)

Pair = tuple[str, str]


class BackgroundWarmer:
    """Starts an engine's cold pairs in one thread of its own, one after the other (a start is CPU-bound, the
    machine may have 2 cores), each pair once: no caption waits for a start it does not need."""

    def __init__(self, engine: PairStartingTranslator) -> None:
        self.engine = engine
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-warm")
        self.lock = threading.Lock()
        self.pending: set[Pair] = set()

    def soon(self, pairs: Sequence[Pair]) -> None:
        with self.lock:
            cold = [p for p in dict.fromkeys(pairs) if p not in self.pending and not self.engine.ready(*p)]
            self.pending.update(cold)
        for pair in cold:
            self.pool.submit(self._warm, pair)

    def _warm(self, pair: Pair) -> None:
        started = time.monotonic()
        try:
            self.engine.warm([pair])
            log.info("mt %s->%s started in %.2f s", *pair, time.monotonic() - started)
        except Exception as exc:  # the next translation of the pair starts it again, or reports the error
            log.warning("mt %s->%s did not start: %r", *pair, exc)
        finally:
            with self.lock:
                self.pending.discard(pair)


class MtStage:
    kind = "mt"

    def __init__(self, options: MtOptions | None = None, translator: Translator | None = None) -> None:
        self.options = options or MtOptions()
        self.translator = translator
        self.warmer: BackgroundWarmer | None = None

    @property
    def engine_name(self) -> str:
        return self.translator.name if self.translator else self.options.engine

    def load(self) -> None:
        if self.translator is None:
            self.translator = load_translator(self.options)
        if isinstance(self.translator, WarmTranslator):
            # the configured pairs start now, before the worker says it is ready; others on a hint or first use
            self.translator.warm([p for p in self.options.warm_pairs if self.translator.supports(*p)])

    def process(self, message: Message) -> Sequence[Message]:
        if isinstance(message, InterimTranscript | WarmUp):
            for code in languages(message):
                check_language(code)
            if self.translator is None:
                self.load()
            if isinstance(message, WarmUp):
                self._warm_soon(message.pairs)
                return []
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

    def _warm_soon(self, pairs: Sequence[Pair]) -> None:
        if not isinstance(self.translator, PairStartingTranslator):
            return
        if self.warmer is None:
            self.warmer = BackgroundWarmer(self.translator)
        self.warmer.soon([p for p in pairs if p[0] != p[1]])

    def _ready(self, source: str, target: str) -> bool:
        return not isinstance(self.translator, PairStartingTranslator) or self.translator.ready(source, target)

    def _interim(self, message: InterimTranscript) -> Sequence[Message]:
        """Interim text for the listeners of other languages (the targets that differ from the source) whose
        pair is ready; cold pairs start in the background and miss this revision."""
        assert self.translator is not None
        wanted = [t for t in message.targets if t != message.language]
        targets = [t for t in wanted if self._ready(message.language, t)]
        if cold := [(message.language, t) for t in wanted if t not in targets]:
            log.info("mt %s: interim without %s, starting", message.log_context, ", ".join(t for _, t in cold))
            self._warm_soon(cold)
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


def languages(message: InterimTranscript | WarmUp) -> tuple[str, ...]:
    if isinstance(message, WarmUp):
        return tuple(code for pair in message.pairs for code in pair)
    return (message.language,)


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
