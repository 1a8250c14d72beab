"""The segmenter on real speech: espeak-ng phrases separated by pauses of known length, with noise."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.signal import lfilter

from pipeline.audio import Samples, resample, rms_dbfs
from pipeline.messages import SAMPLE_RATE
from pipeline.segmenter import Segment, Segmenter, SegmenterOptions, StreamResampler, VadEngine
from tests.speech import espeak, silence, with_noise

PHRASES = (
    "the meeting will start in five minutes",
    "please share your screen with everyone",
    "thank you all for joining today",
    "we can talk about the budget next week",
)
PAUSES_S = (0.6, 1.0, 1.5)
SNR_DB = 20.0
TOLERANCE = SAMPLE_RATE // 10  # 100 ms
CHUNK_S = 0.03  # the gateway feeds 20-30 ms frames


@dataclass(frozen=True)
class Recording:
    clean: Samples
    noisy: Samples
    phrases: tuple[Samples, ...]
    starts: tuple[int, ...]  # where each phrase's samples begin in the recording


def record(phrases: tuple[Samples, ...], pauses_s: tuple[float, ...], snr_db: float = SNR_DB) -> Recording:
    parts, starts, position = [silence(0.5)], [], int(0.5 * SAMPLE_RATE)
    for i, phrase in enumerate(phrases):
        starts.append(position)
        parts.append(phrase)
        position += phrase.size
        if i < len(pauses_s):
            parts.append(silence(pauses_s[i]))
            position += parts[-1].size
    parts.append(silence(1.0))
    clean = np.concatenate(parts)
    return Recording(clean, with_noise(clean, snr_db), phrases, tuple(starts))


def audible_span(clean: Samples, noise_dbfs: float, frame: int = 320, hop: int = 160) -> tuple[int, int]:
    """Truth: first and last 20 ms where the clean speech is louder than the added noise."""
    energies = np.array([rms_dbfs(clean[i : i + frame]) for i in range(0, clean.size - frame, hop)])
    above = np.nonzero(energies > noise_dbfs)[0]
    return int(above[0] * hop), int(above[-1] * hop + frame)


def true_spans(rec: Recording, clean: Samples | None = None) -> list[tuple[int, int]]:
    clean = rec.clean if clean is None else clean
    noise_dbfs = rms_dbfs(rec.noisy - rec.clean)
    spans = []
    for start, phrase in zip(rec.starts, rec.phrases, strict=True):
        a, b = audible_span(clean[start : start + phrase.size], noise_dbfs)
        spans.append((start + a, start + b))
    return spans


def segment(audio: Samples, rate: int = SAMPLE_RATE, options: SegmenterOptions | None = None) -> list[Segment]:
    return feed_all(Segmenter(options or SegmenterOptions(), rate), audio, rate)


def feed_all(segmenter: Segmenter, audio: Samples, rate: int = SAMPLE_RATE) -> list[Segment]:
    chunk = int(CHUNK_S * rate)
    out: list[Segment] = []
    for i in range(0, audio.size, chunk):
        out += segmenter.feed(audio[i : i + chunk])
    return out + segmenter.flush()


@pytest.fixture(scope="module")
def meeting() -> Recording:
    return record(tuple(espeak(p) for p in PHRASES), PAUSES_S)


def assert_matches(segments: list[Segment], spans: list[tuple[int, int]]) -> None:
    assert len(segments) == len(spans), [(s.start_s, s.end_s) for s in segments]
    for seg, (onset, offset) in zip(segments, spans, strict=True):
        assert abs(seg.speech_start_sample - onset) <= TOLERANCE, (seg.speech_start_sample, onset)
        assert abs(seg.speech_end_sample - offset) <= TOLERANCE, (seg.speech_end_sample, offset)
        assert seg.start_sample < onset, "word start clipped"
        assert seg.end_sample >= offset - TOLERANCE
        assert seg.samples.size == seg.end_sample - seg.start_sample
        assert seg.duration_s <= SegmenterOptions().max_segment_s
    for before, after in itertools.pairwise(segments):
        assert before.end_sample <= after.start_sample


@pytest.mark.parametrize("vad", ["webrtc", "silero"])
def test_boundaries_follow_the_true_pauses_in_noise(meeting: Recording, vad: VadEngine) -> None:
    segments = segment(meeting.noisy, options=SegmenterOptions(vad=vad))
    assert_matches(segments, true_spans(meeting))
    assert all(s.reason in ("pause", "turn_end") for s in segments)


def test_segment_audio_is_the_input_audio(meeting: Recording) -> None:
    for seg in segment(meeting.noisy):
        np.testing.assert_array_equal(seg.samples, meeting.noisy[seg.start_sample : seg.end_sample])


def test_pcm16_bytes_give_the_same_segments(meeting: Recording) -> None:
    from pipeline.audio import float_to_pcm16

    segmenter = Segmenter(SegmenterOptions(), SAMPLE_RATE)
    pcm = float_to_pcm16(meeting.noisy)
    out = [s for i in range(0, len(pcm), 960) for s in segmenter.feed(pcm[i : i + 960])] + segmenter.flush()
    expected = segment(meeting.noisy)
    assert [(s.start_sample, s.end_sample) for s in out] == [(s.start_sample, s.end_sample) for s in expected]


def test_48khz_input_gives_the_same_boundaries(meeting: Recording) -> None:
    at_16k = segment(meeting.noisy)
    at_48k = segment(resample(meeting.noisy, SAMPLE_RATE, 48_000), 48_000)
    assert len(at_48k) == len(at_16k)
    for a, b in zip(at_16k, at_48k, strict=True):
        assert abs(a.start_sample - b.start_sample) <= 320 and abs(a.end_sample - b.end_sample) <= 320


def test_8khz_input_gives_the_same_boundaries(meeting: Recording) -> None:
    """Telephone band: the truth is what survives 8 kHz (a final "s" above 4 kHz does not)."""
    narrow = resample(resample(meeting.clean, SAMPLE_RATE, 8_000), 8_000, SAMPLE_RATE)
    at_8k = segment(resample(meeting.noisy, SAMPLE_RATE, 8_000), 8_000)
    assert_matches(at_8k, true_spans(meeting, narrow))
    at_16k = segment(meeting.noisy)
    for a, b in zip(at_16k, at_8k, strict=True):
        assert abs(a.speech_start_sample - b.speech_start_sample) <= TOLERANCE


def test_stream_resampler_equals_one_shot_resampling() -> None:
    from scipy.signal import resample_poly

    rng = np.random.default_rng(3)
    signal = rng.standard_normal(44_100).astype(np.float32)
    resampler = StreamResampler(44_100)
    sizes = rng.integers(1, 3_000, size=100)
    bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), signal.size)
    pieces = [resampler.feed(signal[a:b]) for a, b in itertools.pairwise(bounds)]
    streamed = np.concatenate([*pieces, resampler.flush()])
    np.testing.assert_allclose(streamed, resample_poly(signal, resampler.up, resampler.down), atol=1e-6)


def test_long_unbroken_speech_is_cut_at_quiet_points_under_the_maximum() -> None:
    text = (
        "when we planned the new office we wanted every team to sit near the people they work with most "
        "and we wanted quiet rooms for calls and a big kitchen where everyone meets at lunch"
    )
    speech = espeak(text, words_per_minute=170)
    rec = record((speech,), ())
    options = SegmenterOptions(max_segment_s=4.0)
    segments = segment(rec.noisy, options=options)
    cuts = [s for s in segments if s.reason == "max_length"]
    assert len(cuts) >= 2
    assert all(s.duration_s <= options.max_segment_s for s in segments)
    loud = float(np.median([rms_dbfs(speech[i : i + 320]) for i in range(0, speech.size - 320, 320)]))
    for seg in cuts:
        around_cut = rec.clean[seg.end_sample - 160 : seg.end_sample + 160]
        assert rms_dbfs(around_cut) < loud - 20, "cut inside a word"
    for before, after in itertools.pairwise(segments):
        if before.reason == "max_length":
            assert after.start_sample == before.end_sample, "a cut loses no audio"


@pytest.mark.parametrize("kind", ["white", "hum", "rumble"])
def test_steady_noise_alone_gives_no_segments(kind: str) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(8 * SAMPLE_RATE) / SAMPLE_RATE
    noise = {
        "white": 0.03 * rng.standard_normal(t.size),
        "hum": 0.05 * np.sin(2 * np.pi * 120 * t)
        + 0.03 * np.sin(2 * np.pi * 240 * t)
        + 0.01 * rng.standard_normal(t.size),
        "rumble": 0.3 * lfilter([0.02], [1.0, -0.98], rng.standard_normal(t.size)),  # below ~50 Hz
    }[kind]
    segmenter = Segmenter(SegmenterOptions(), SAMPLE_RATE)
    assert feed_all(segmenter, noise.astype(np.float32)) == []
    assert not segmenter.speaking and segmenter.last_speech_sample is None


def test_closing_pause_adapts_to_the_speakers_pauses() -> None:
    """The same 0.45 s gap ends a brisk speaker's phrase but not a hesitant speaker's."""
    words = tuple(audible(espeak(w)) for w in ("so", "I think", "we should", "wait", "for the", "numbers"))
    hesitant, brisk = Segmenter(), Segmenter()
    assert len(feed_all(hesitant, record(words, (0.35, 0.35, 0.35, 0.35, 0.45)).noisy)) == 1
    assert len(feed_all(brisk, record(words, (0.15, 0.15, 0.15, 0.15, 0.45)).noisy)) == 2
    assert brisk.end_pause_s < 0.45 < hesitant.end_pause_s


def audible(speech: Samples) -> Samples:
    """espeak-ng pads words with silence; keep the word itself so the gaps are the ones we set."""
    start, end = audible_span(speech, -50.0)
    return speech[start:end]


def test_speaking_state_and_last_speech(meeting: Recording) -> None:
    segmenter = Segmenter(SegmenterOptions(), SAMPLE_RATE)
    onset, offset = true_spans(meeting)[0]
    segmenter.feed(meeting.noisy[: onset + SAMPLE_RATE // 2])
    assert segmenter.speaking
    segmenter.feed(meeting.noisy[onset + SAMPLE_RATE // 2 : offset + int(0.55 * SAMPLE_RATE)])
    assert not segmenter.speaking
    assert segmenter.last_speech_s is not None
    assert abs(segmenter.last_speech_s * SAMPLE_RATE - offset) <= TOLERANCE


def test_segment_becomes_a_message(meeting: Recording) -> None:
    seg = segment(meeting.noisy)[0]
    message = seg.to_message("room", "alice", 0, "en", ("es",))
    assert (message.start_sample, message.end_sample) == (seg.start_sample, seg.end_sample)
    assert len(message.pcm) == 2 * seg.samples.size and message.duration_s == pytest.approx(seg.duration_s)


def test_rejects_rates_outside_8_to_48_khz() -> None:
    with pytest.raises(ValueError):
        Segmenter(SegmenterOptions(), 96_000)


@pytest.mark.parametrize("vad", ["webrtc", "silero"])
def test_a_stream_that_starts_in_mid_speech_keeps_its_first_phrase(vad: VadEngine) -> None:
    """Issue 27: audio that reaches the gateway while the person is already talking ("hola" from the first
    sample) taught the noise floor the speech itself, and "hola" was never voiced. The floor falls at the first
    pause; the stream's start is judged again against it, and "hola" is the first segment."""
    hello, question = espeak("hola", "es"), espeak("me oís bien", "es")
    audio = np.concatenate([hello, silence(0.6), question, silence(1.5)])
    segments = feed_all(Segmenter(SegmenterOptions(vad=vad, end_of_turn="pause")), audio)
    assert len(segments) == 2, [(s.start_s, s.end_s) for s in segments]
    first, second = segments
    assert first.speech_start_sample <= 0.06 * SAMPLE_RATE, "from the stream's first words"
    assert first.end_sample <= hello.size + 0.2 * SAMPLE_RATE, "closed at the pause after them"
    assert abs(second.speech_start_sample - (hello.size + 0.6 * SAMPLE_RATE)) <= 0.1 * SAMPLE_RATE


def test_a_noisy_start_is_not_judged_again_into_speech() -> None:
    """The second look is only for a floor that fell a gate at a pause: steady noise from the first sample keeps
    its floor, and stays silence."""
    noise = with_noise(np.zeros(3 * SAMPLE_RATE, dtype=np.float32) + 0.05, snr_db=0)  # loud, steady hiss
    assert feed_all(Segmenter(SegmenterOptions(end_of_turn="pause")), noise) == []
