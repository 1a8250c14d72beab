"""Interim captions on real speech with the real stages: the bundled Piper voice (English) and espeak-ng
(Spanish) go through the segmenter (Smart Turn on) in 20 ms chunks, as the gateway feeds it; while a segment
is open an InterimTracker asks the real ASR stage (Whisper base drafts) every 0.6 s of audio, and each
accepted interim goes through the real MT stage (Apertium); each closed segment gets its final.

Measured (audio time, not wall time: timings belong to the latency benchmark):
- the rewrite rate (pipeline.interim.rewrite_rate) of the captions a listener of the spoken language sees,
  interim ones then the final: the fraction of shown words a later update changes;
- committed words are never changed by a later interim;
- a long utterance shows at least 3 interim updates before it ends."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import Samples, float_to_pcm16, resample
from pipeline.interim import InterimTracker, rewrite_rate, same_word
from pipeline.messages import SAMPLE_RATE, InterimTranscript, InterimTranslation, SpeechSegment, Transcript
from pipeline.segmenter import Segmenter
from tests.speech import espeak, silence, with_noise
from tests.test_quality import wer
from workers.asr import AsrStage
from workers.engines.asr.base import AsrOptions
from workers.engines.asr.whisper_ct2 import FasterWhisperRecognizer
from workers.engines.mt.apertium import ApertiumTranslator
from workers.engines.tts.piper import PiperSynthesizer
from workers.mt import MtStage

DATA = json.loads((Path(__file__).parent / "data" / "quality.json").read_text())
# One sentence of about 8 s without a pause that ends a turn: Smart Turn cuts longer speech at sentence ends.
LONG_EN = (
    "Before we start I would like to thank the whole team for the hard work on the new release "
    "and for all the help with the customers during the last month"
)
CHUNK = SAMPLE_RATE // 50  # 20 ms, as the gateway feeds the segmenter
# Measured here: 0.02 on the Piper voice, 0.47 on espeak-ng's Spanish (which Whisper base hears badly: its
# finals have WER 0.22), 0.14 pooled.
MAX_REWRITE_RATE = 0.3
MAX_REWRITE_RATE_EN = 0.15  # 0.02-0.07 measured: the Piper voice varies from run to run


@dataclass
class Utterance:
    language: str
    interims: list[InterimTranscript] = field(default_factory=list)
    translations: list[InterimTranslation] = field(default_factory=list)
    final: str = ""  # decoded after the committed words, as the gateway sends it
    plain_final: str = ""  # the same segment decoded from scratch
    committed_at_close: str = ""
    speech_s: float = 0.0

    @property
    def displays(self) -> list[str]:
        return [i.text for i in self.interims] + [self.final]


@pytest.fixture(scope="module")
def stages() -> Iterator[tuple[AsrStage, MtStage]]:
    translator = ApertiumTranslator()
    yield AsrStage(recognizer=FasterWhisperRecognizer(AsrOptions())), MtStage(translator=translator)
    translator.close()


def speak_through(stages: tuple[AsrStage, MtStage], audio: Samples, language: str, target: str) -> list[Utterance]:
    asr, mt = stages
    segmenter, tracker = Segmenter(), InterimTracker()
    utterances, current = [], Utterance(language)
    for start in range(0, audio.size + CHUNK, CHUNK):
        closed = segmenter.feed(audio[start : start + CHUNK]) if start < audio.size else segmenter.flush()
        for segment in closed:
            seq = len(utterances)
            committed = tracker.close(seq)
            message = segment.to_message("room", "ana", seq, language, (target,), committed=committed)
            [final] = asr.process(message)
            [plain] = asr.process(dataclasses.replace(message, committed=""))
            assert isinstance(final, Transcript) and isinstance(plain, Transcript)
            current.final, current.plain_final, current.committed_at_close = final.text, plain.text, committed
            current.speech_s = (segment.speech_end_sample - segment.speech_start_sample) / SAMPLE_RATE
            utterances.append(current)
            current = Utterance(language)
        opened = segmenter.open_audio()
        if opened is None:
            continue
        request = tracker.request("room", "ana", len(utterances), language, (target,), *opened)
        for result in asr.process(request) if request else ():
            assert isinstance(result, InterimTranscript)
            if tracker.accept(result):
                current.interims.append(result)
                current.translations += [t for t in mt.process(result) if isinstance(t, InterimTranslation)]
    return utterances


def clip(samples: Samples) -> Samples:
    return with_noise(np.concatenate([silence(0.5), samples, silence(1.2)]), 35.0)


@pytest.fixture(scope="module")
def spoken(stages: tuple[AsrStage, MtStage]) -> list[Utterance]:
    piper = PiperSynthesizer()
    english = [*DATA["asr_en"], LONG_EN]
    utterances = []
    for text in english:
        audio = piper.synthesize(text, "en")
        utterances += speak_through(stages, clip(resample(audio.samples, audio.sample_rate, SAMPLE_RATE)), "en", "es")
    for text in DATA["asr_es"][:3]:
        utterances += speak_through(stages, clip(espeak(text, "es", 130)), "es", "en")
    for u in utterances:
        print(f"\n[{u.language}] {len(u.interims)} interim(s), rewrite rate {rewrite_rate(u.displays):.2f}")
        for shown in u.interims:
            print(f"   {shown.committed!r} + {shown.text[len(shown.committed) :]!r}")
        print(f"   final: {u.final!r}")
    return utterances


@pytest.mark.slow
def test_interim_captions_rarely_rewrite_shown_words(spoken: list[Utterance]) -> None:
    rates = {language: pooled_rewrite_rate([u for u in spoken if u.language == language]) for language in ("en", "es")}
    rate = pooled_rewrite_rate(spoken)
    print(f"\nrewrite rate over {len(spoken)} utterances: {rate:.3f} (en {rates['en']:.3f}, es {rates['es']:.3f})")
    assert all(u.interims for u in spoken), "every utterance shows text before its final"
    assert rate <= MAX_REWRITE_RATE and rates["en"] <= MAX_REWRITE_RATE_EN


def pooled_rewrite_rate(utterances: list[Utterance]) -> float:
    """rewrite_rate over several utterances, each weighted by the words it showed."""
    shown = [sum(len(d.split()) for d in u.displays[:-1]) for u in utterances]
    return sum(rewrite_rate(u.displays) * n for u, n in zip(utterances, shown, strict=True)) / max(sum(shown), 1)


@pytest.mark.slow
def test_committed_words_only_grow(spoken: list[Utterance]) -> None:
    for u in spoken:
        for before, after in zip(u.interims, u.interims[1:], strict=False):
            old, new = before.committed.split(), after.committed.split()
            assert len(new) >= len(old) and all(same_word(a, b) for a, b in zip(old, new, strict=False))
            assert after.text.startswith(after.committed)


@pytest.mark.slow
def test_a_long_utterance_shows_several_updates(spoken: list[Utterance]) -> None:
    long = next(u for u in spoken if "release" in u.final.lower())
    print(f"\n{long.speech_s:.1f} s utterance: {len(long.interims)} interim updates")
    assert len(long.interims) >= 3
    assert len({i.text for i in long.interims}) >= 3  # updates that show something new


@pytest.mark.slow
def test_interim_text_is_translated(spoken: list[Utterance]) -> None:
    english = [u for u in spoken if u.language == "en"]
    translated = [t for u in english for t in u.translations]
    assert translated and all(t.language == "es" and t.text and not t.note for t in translated)
    assert any("equipo" in t.text.lower() for t in translated)  # "the whole team"


@pytest.mark.slow
def test_finals_that_reuse_committed_words_are_as_good(spoken: list[Utterance]) -> None:
    """A final decoded after the committed words keeps them (no rewrite of what was shown as stable) and is
    as accurate, against the text spoken, as the same segment decoded from scratch."""
    for u in spoken:
        assert u.final.startswith(u.committed_at_close)
    english = [u for u in spoken if u.language == "en"]
    reused, scratch = corpus_wer(english, "final"), corpus_wer(english, "plain_final")
    print(f"\nEnglish finals: WER {reused:.3f} after committed words, {scratch:.3f} from scratch")
    assert reused <= scratch + 0.02


def corpus_wer(utterances: list[Utterance], field_name: str) -> float:
    """Word error rate of the utterances' finals against the sentences spoken, as test_quality counts it."""
    spoken_text = " ".join([*DATA["asr_en"], LONG_EN])
    heard = " ".join(getattr(u, field_name) for u in utterances)
    edits, words = wer(spoken_text, heard)
    return edits / words


@pytest.mark.slow
def test_full_window_finals_also_keep_committed_words() -> None:
    """BABELROOM_ASR_CONTEXT=full: Whisper's 30 s window (slower), same contract: the committed words lead."""
    full = FasterWhisperRecognizer(AsrOptions(audio_context="full"))
    audio = PiperSynthesizer().synthesize(DATA["asr_en"][2], "en")  # "Please send me the report after lunch."
    samples = clip(resample(audio.samples, audio.sample_rate, SAMPLE_RATE))
    message = SpeechSegment(
        room="room", speaker="ana", seq=0, language="en", end_sample=samples.size, pcm=float_to_pcm16(samples),
        committed="Please send",
    )  # fmt: skip
    transcript = full.transcribe(message)
    print(f"\nfull window after 'Please send': {transcript.text!r}")
    assert transcript.text.startswith("Please send") and "report" in transcript.text and transcript.words
