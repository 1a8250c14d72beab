"""End of turn: Smart Turn v3 (the model from the pipecat-ai wheel) closes a finished sentence sooner than
the adaptive pause can, keeps an unfinished one open across the same pause, and the segmenter falls back to
the pause alone when the model is switched off or missing. Speech is the bundled Piper voice: the model was
trained on human speech and judges espeak-ng's robotic voice erratically."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pipeline import endofturn
from pipeline.audio import Samples, resample
from pipeline.endofturn import SmartTurn, log_mel, shared_smart_turn
from pipeline.messages import SAMPLE_RATE
from pipeline.segmenter import Segment, Segmenter, SegmenterOptions
from tests.speech import silence, with_noise
from tests.test_segmenter import CHUNK_S, audible_span
from workers.engines.tts.piper import PiperSynthesizer

# Piper's voice varies from one synthesis to the next; these are far from the model's threshold (~0.99 and
# ~0.01 measured), unlike e.g. "I would like to order a pizza with" (0.4-0.7).
FINISHED = "Thank you very much for your help."
UNFINISHED = "The reason I called you is because"
NEXT = "the report is late."
GAP_S = 0.45
# A closing pause well over the gap (as an adapted hesitant speaker's would be): the pause alone does not
# close the gap, so only the model's judgement can.
HESITANT = {"default_end_pause_s": 0.9}


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperSynthesizer]:
    yield PiperSynthesizer()


def speak(piper: PiperSynthesizer, text: str) -> Samples:
    audio = piper.synthesize(text, "en")
    samples = resample(audio.samples, audio.sample_rate, SAMPLE_RATE)
    start, end = audible_span(samples, -50.0)
    return samples[start:end]


def closes(audio: Samples, options: SegmenterOptions) -> list[tuple[Segment, int]]:
    """Each segment with the input position (in samples) at which the segmenter gave it out."""
    segmenter, chunk, out = Segmenter(options), int(CHUNK_S * SAMPLE_RATE), []
    for i in range(0, audio.size, chunk):
        out += [(s, i + chunk) for s in segmenter.feed(audio[i : i + chunk])]
    return out + [(s, audio.size) for s in segmenter.flush()]


def test_features_are_whispers() -> None:
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32)
    extractor = transformers.WhisperFeatureExtractor(chunk_length=8)
    padded = np.pad(audio, (8 * SAMPLE_RATE - audio.size, 0))
    reference = extractor(padded, sampling_rate=SAMPLE_RATE, do_normalize=True, return_tensors="np").input_features
    assert log_mel(audio).shape == (80, 800)
    np.testing.assert_allclose(log_mel(audio), reference[0], atol=1e-4)


def test_finished_sentence_closes_sooner_than_the_pause(piper: PiperSynthesizer) -> None:
    speech = speak(piper, FINISHED)
    audio = with_noise(np.concatenate([silence(0.5), speech, silence(1.5)]), 30.0)
    speech_end = int(0.5 * SAMPLE_RATE) + speech.size
    [(by_turn, turn_at)] = closes(audio, SegmenterOptions())
    [(by_pause, pause_at)] = closes(audio, SegmenterOptions(end_of_turn="pause"))
    print(f"\nclosed {(turn_at - speech_end) / SAMPLE_RATE:.2f} s after speech by Smart Turn, "
          f"{(pause_at - speech_end) / SAMPLE_RATE:.2f} s by the pause")  # fmt: skip
    assert by_turn.reason == "turn_end" and by_pause.reason == "pause"
    assert pause_at - turn_at >= 0.15 * SAMPLE_RATE
    assert abs(by_turn.speech_end_sample - by_pause.speech_end_sample) <= SAMPLE_RATE // 10


def test_unfinished_sentence_stays_open_across_a_pause(piper: PiperSynthesizer) -> None:
    def meeting(first: str) -> Samples:
        parts = [silence(0.5), speak(piper, first), silence(GAP_S), speak(piper, NEXT), silence(1.5)]
        return with_noise(np.concatenate(parts), 30.0)

    assert len(closes(meeting(UNFINISHED), SegmenterOptions(**HESITANT))) == 1
    assert len(closes(meeting(FINISHED), SegmenterOptions(**HESITANT))) == 2
    assert len(closes(meeting(FINISHED), SegmenterOptions(end_of_turn="pause", **HESITANT))) == 1


def test_model_judges_complete_and_incomplete(piper: PiperSynthesizer) -> None:
    """On what the segmenter hands it: pre-roll, the speech, the first 0.25 s of the pause."""
    model = SmartTurn()
    finished, unfinished = (
        model.probability(np.concatenate([silence(0.25), speak(piper, text), silence(0.25)]))
        for text in (FINISHED, UNFINISHED)
    )
    print(f"\nP(turn complete): finished {finished:.2f}, unfinished {unfinished:.2f}")
    assert finished > 0.5 > unfinished


def test_pause_mode_and_a_missing_model_fall_back_to_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Segmenter(SegmenterOptions()).turn_detection
    assert not Segmenter(SegmenterOptions(end_of_turn="pause")).turn_detection
    monkeypatch.setattr(endofturn, "MODEL_PACKAGE", "babelroom_no_such_package")
    shared_smart_turn.cache_clear()
    try:
        with pytest.raises(endofturn.ModelUnavailable, match="pip install --no-deps"):
            SmartTurn()
        assert not Segmenter(SegmenterOptions()).turn_detection
    finally:
        shared_smart_turn.cache_clear()
    with pytest.raises(ValueError, match="smart-turn, pause"):
        SegmenterOptions(end_of_turn="never")  # type: ignore[arg-type]


def test_open_audio_is_the_segment_so_far(piper: PiperSynthesizer) -> None:
    speech = speak(piper, FINISHED)
    audio = np.concatenate([silence(0.5), speech, silence(1.0)])
    segmenter = Segmenter(SegmenterOptions())
    assert segmenter.open_audio() is None
    half = int(0.5 * SAMPLE_RATE) + speech.size // 2
    segmenter.feed(audio[:half])
    opened = segmenter.open_audio()
    assert opened is not None
    start, so_far = opened
    assert start < int(0.5 * SAMPLE_RATE) and start + so_far.size == segmenter.position_sample
    np.testing.assert_array_equal(so_far, audio[start : start + so_far.size])
    [segment] = segmenter.feed(audio[half:])
    assert segment.start_sample == start and segmenter.open_audio() is None


def test_gateway_setting() -> None:
    from gateway.options import GatewayOptions

    assert GatewayOptions.from_env({}).segmenter.end_of_turn == "smart-turn"
    assert GatewayOptions.from_env({"BABELROOM_END_OF_TURN": "Pause"}).segmenter.end_of_turn == "pause"
    with pytest.raises(ValueError, match="BABELROOM_END_OF_TURN='never'"):
        GatewayOptions.from_env({"BABELROOM_END_OF_TURN": "never"})
