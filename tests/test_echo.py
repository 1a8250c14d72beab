"""The echo guard (gateway/bridge/echo.py) on recorded speech through a simulated loudspeaker: what the gateway
played goes through Opus to the page, out of its loudspeaker (a delay, a gain, a decaying room reverberation)
into its microphone with some noise, and through Opus back to the gateway. Three delay/gain settings.

- miss rate: segments of pure echo the guard lets through (must be 0);
- false-echo rate: segments of real speech it drops: own speech right after the playback, own speech over
  it (double talk, at the echo's level), real human speech (LibriVox, from pocketsphinx-testdata) and
  espeak (must be 0). The guard's cost per second of judged audio is printed.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.asr_context import opus_round_trip
from gateway.bridge.echo import EchoGuard, power_frames
from gateway.media.playout import OUTPUT_RATE, Clip, PlayoutOptions, PlayoutTimeline
from gateway.rooms.room import Participant, Profile, Room
from pipeline.audio import Samples, read_wav, resample
from pipeline.messages import SAMPLE_RATE
from tests.speech import espeak

SETTINGS = ((0.1, 0.3), (0.25, 0.6), (0.5, 0.9))  # loudspeaker to microphone: delay (s), gain
PLAYED = (
    "buenas tardes a todos",
    "hoy vamos a hablar del presupuesto del proyecto",
    "la casa es grande y el gato es negro",
)
OWN = "we need to find a better solution for our customers before the end of the year"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
REVERB_S = 0.3  # RT60 of the simulated room
REVERB_LEVEL = 0.02  # the reverberant tail's amplitude next to the direct sound (about half its energy)
MIC_NOISE = 1e-3
PLAYED_AT = 2.0  # wall time (timeline origin 0) the played speech starts


def room_impulse(seed: int) -> Samples:
    """A direct path and a decaying noise tail, as the browser test's ConvolverNode has."""
    t = np.arange(round(REVERB_S * OUTPUT_RATE)) / OUTPUT_RATE
    tail = np.random.default_rng(seed).standard_normal(t.size) * np.exp(-6.9 * t / REVERB_S) * REVERB_LEVEL
    tail[0] = 1.0
    return tail.astype(np.float32)


def loudspeaker(played_48k: Samples, delay_s: float, gain: float, seed: int) -> Samples:
    """What the microphone picks up of what the page received (48 kHz), delayed, quieter and reverberant."""
    heard = np.convolve(opus_round_trip(played_48k), room_impulse(seed))[: played_48k.size]
    echo = np.concatenate([np.zeros(round(delay_s * OUTPUT_RATE), np.float32), heard])[: played_48k.size] * gain
    return echo.astype(np.float32)


def mic_at_gateway(mic_48k: Samples) -> Samples:
    """The microphone through Opus to the gateway, with some noise, at the segmenter's 16 kHz."""
    noise = np.random.default_rng(7).standard_normal(mic_48k.size).astype(np.float32) * MIC_NOISE
    return resample(opus_round_trip(mic_48k + noise), OUTPUT_RATE, SAMPLE_RATE)


@functools.cache
def real_speech() -> tuple[Samples, ...]:
    human = [read_wav(path) for path in sorted(LIBRIVOX.glob("*.wav"))][:3]
    return (*human, espeak(OWN, "en"))


def is_echo(guard: EchoGuard, room: Room, speaker: Participant, audio: Samples, end_s: float) -> bool:
    verdict = guard.check(room, speaker, audio, end_s)
    return verdict is not None and verdict.echo


def rms(samples: Samples) -> float:
    voiced = samples[np.abs(samples) > 1e-3]
    return float(np.sqrt(np.mean(voiced**2))) if voiced.size else 0.0


class Scene:
    """Ben (speaks en, hears es) on loudspeakers; the gateway played one Spanish sentence on the es feed."""

    def __init__(self, played: Samples, length_s: float) -> None:
        self.room = Room("r", PlayoutOptions())
        self.ben = Participant("ben", "r", Profile("Ben", "en", "es"))
        self.ana = Participant("ana", "r", Profile("Ana", "es", "en"))
        self.room.add(self.ben)
        self.room.add(self.ana)
        timeline = self.room.timelines["es"] = PlayoutTimeline(PlayoutOptions(delay_s=0.0), origin=0.0)
        timeline.offer(Clip("ana", 0, resample(played, SAMPLE_RATE, OUTPUT_RATE)), PLAYED_AT)
        self.feed = timeline.render(0, round(length_s * OUTPUT_RATE))  # what Ben's page received
        self.guard = EchoGuard()
        self.seconds_judged = 0.0
        self.cpu_s = 0.0

    def is_echo(self, mic_16k: Samples, start_s: float, end_s: float) -> bool:
        segment = mic_16k[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)]
        started = time.process_time()
        echo = is_echo(self.guard, self.room, self.ben, segment, end_s)
        self.cpu_s += time.process_time() - started
        self.seconds_judged += end_s - start_s
        return echo


@pytest.mark.parametrize(("delay_s", "gain"), SETTINGS)
def test_echo_is_caught_and_speech_passes(delay_s: float, gain: float) -> None:
    misses, echoes, false_echoes, speeches = 0, 0, 0, 0
    cpu_s, judged_s = 0.0, 0.0
    for i, text in enumerate(PLAYED):
        played = espeak(text, "es")
        played_s = played.size / SAMPLE_RATE
        scene = Scene(played, PLAYED_AT + played_s + 8.0)
        echo_48k = loudspeaker(scene.feed, delay_s, gain, seed=i)
        echo_start, echo_end = PLAYED_AT + delay_s, PLAYED_AT + delay_s + played_s
        # pure echo, cut as the segmenter cuts it (pre-roll, closing pause)
        misses += not scene.is_echo(mic_at_gateway(echo_48k), echo_start - 0.2, echo_end + 0.6)
        echoes += 1
        for own in real_speech():
            level = gain * rms(played) / max(rms(own), 1e-6)  # own speech as loud as the echo
            own_48k = resample(own, SAMPLE_RATE, OUTPUT_RATE) * level
            for start in (echo_end + 0.1, PLAYED_AT + played_s / 3):  # right after the playback; over it
                mic_48k = echo_48k.copy()
                at = round(start * OUTPUT_RATE)
                mic_48k[at : at + own_48k.size] += own_48k[: mic_48k.size - at]
                end = min(start + own.size / SAMPLE_RATE, mic_48k.size / OUTPUT_RATE) + 0.6
                wrong = scene.is_echo(mic_at_gateway(mic_48k), start - 0.2, end)
                false_echoes += wrong
                speeches += 1
        cpu_s, judged_s = cpu_s + scene.cpu_s, judged_s + scene.seconds_judged
    print(
        f"delay {delay_s * 1000:.0f} ms gain {gain}: miss rate {misses}/{echoes}, false-echo rate "
        f"{false_echoes}/{speeches}; cost {1000 * cpu_s / judged_s:.1f} ms of CPU per second judged"
    )
    assert misses == 0, f"{misses} of {echoes} echo segments passed as speech"
    assert false_echoes == 0, f"{false_echoes} of {speeches} segments of real speech were dropped as echo"


@pytest.mark.parametrize(("delay_s", "gain"), SETTINGS[1:])
def test_speech_joined_to_the_echo_tail_loses_only_the_echo(delay_s: float, gain: float) -> None:
    """The segmenter joins the echo and words said right after it into one segment: the echo part is cut."""
    played = espeak(PLAYED[2], "es")
    played_s = played.size / SAMPLE_RATE
    scene = Scene(played, PLAYED_AT + played_s + 8.0)
    mic_48k = loudspeaker(scene.feed, delay_s, gain, seed=5)
    own = real_speech()[0]
    echo_end = PLAYED_AT + delay_s + played_s
    at = round((echo_end + 0.2) * OUTPUT_RATE)
    own_48k = resample(own, SAMPLE_RATE, OUTPUT_RATE) * (gain * rms(played) / rms(own))
    mic_48k[at : at + own_48k.size] += own_48k[: mic_48k.size - at]
    start, end = PLAYED_AT + delay_s - 0.2, echo_end + 0.2 + own.size / SAMPLE_RATE + 0.5
    mic = mic_at_gateway(mic_48k)[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
    verdict = scene.guard.check(scene.room, scene.ben, mic, end)
    assert verdict is not None and not verdict.echo
    cut_s = verdict.leading_samples / SAMPLE_RATE
    took = echo_end + 0.2 - start
    print(f"delay {delay_s * 1000:.0f} ms gain {gain}: {cut_s:.2f} s cut; the echo and pause took {took:.2f} s")
    assert echo_end - 0.5 - start < cut_s < echo_end + 0.25 - start


def test_echo_of_an_original_voice_is_caught() -> None:
    """Ana and Ben both speak and hear es: Ben's page plays Ana's own voice, which his loudspeaker returns."""
    room = Room("r", PlayoutOptions())
    ana = Participant("ana", "r", Profile("Ana", "es", "es"))
    ben = Participant("ben", "r", Profile("Ben", "es", "es"))
    room.add(ana)
    room.add(ben)
    guard = EchoGuard()
    voice = resample(espeak(PLAYED[1], "es"), SAMPLE_RATE, OUTPUT_RATE)
    voice = np.concatenate([np.zeros(OUTPUT_RATE, np.float32), voice, np.zeros(2 * OUTPUT_RATE, np.float32)])
    frame = OUTPUT_RATE // 50
    for k in range(voice.size // frame):  # Ana's voice reaches the gateway frame by frame, 20 ms apart
        guard.heard(ana.id, voice[k * frame : (k + 1) * frame], (k + 1) * 0.02)
    echo = mic_at_gateway(loudspeaker(voice, 0.25, 0.6, seed=3))
    end_s = voice.size / OUTPUT_RATE - 1.0
    assert is_echo(guard, room, ben, echo[round(1.05 * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)], end_s)
    assert not is_echo(guard, room, ana, echo[round(1.05 * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)], end_s), (
        "Ana is not played her own voice"
    )


def test_an_echo_onset_takes_no_floor_and_speech_does() -> None:
    """While the open segment is echo (or too short to tell during playback), it may not take the floor."""
    played = espeak(PLAYED[1], "es")
    scene = Scene(played, PLAYED_AT + played.size / SAMPLE_RATE + 4.0)
    echo = mic_at_gateway(loudspeaker(scene.feed, 0.25, 0.6, seed=0))
    start = round((PLAYED_AT + 0.05) * SAMPLE_RATE)
    verdicts = []
    for until_s in (0.3, 0.8, 1.5, 2.0):
        now = PLAYED_AT + 0.05 + until_s
        verdicts.append(
            scene.guard.onset_is_echo(scene.room, scene.ben, start, echo[start : round(now * SAMPLE_RATE)], now)
        )
    assert verdicts == [True, True, True, True]
    own = espeak(OWN, "en") * (0.6 * rms(played) / rms(espeak(OWN, "en")))
    speech = echo.copy()
    speech[start : start + own.size] += own[: speech.size - start]
    now = PLAYED_AT + 0.05 + 1.5
    assert not scene.guard.onset_is_echo(
        scene.room, scene.ben, start + 1, speech[start : round(now * SAMPLE_RATE)], now
    )
    assert scene.guard.stats.onsets_echo >= 1


def spectral_error_db(samples: Samples, clean: Samples) -> float:
    """How far `samples` is from `clean` in magnitude spectrum, against `clean`'s own power (dB)."""
    n = min(samples.size, clean.size)
    a, b = np.sqrt(power_frames(samples[:n])), np.sqrt(power_frames(clean[:n]))
    return float(10 * np.log10(np.sum((a - b) ** 2) / np.sum(b**2)))


@pytest.mark.parametrize(("delay_s", "gain"), SETTINGS)
def test_the_echo_under_own_speech_is_taken_out(delay_s: float, gain: float) -> None:
    """Double talk: a real voice over the echo, as loud as it. The segment passes as speech, and what goes on
    to recognition is closer to the voice alone than what the microphone picked up."""
    played = espeak(PLAYED[1], "es")
    played_s = played.size / SAMPLE_RATE
    scene = Scene(played, PLAYED_AT + played_s + 8.0)
    echo_48k = loudspeaker(scene.feed, delay_s, gain, seed=11)
    own = real_speech()[1]
    start = PLAYED_AT + played_s / 4
    own_48k = np.zeros_like(echo_48k)
    at = round(start * OUTPUT_RATE)
    voice = resample(own, SAMPLE_RATE, OUTPUT_RATE) * (gain * rms(played) / rms(own))
    own_48k[at : at + voice.size] = voice[: own_48k.size - at]
    end = min(start + own.size / SAMPLE_RATE, echo_48k.size / OUTPUT_RATE) + 0.6
    cut = slice(round((start - 0.2) * SAMPLE_RATE), round(end * SAMPLE_RATE))
    mic, alone = mic_at_gateway(echo_48k + own_48k)[cut], mic_at_gateway(own_48k)[cut]
    verdict = scene.guard.check(scene.room, scene.ben, mic, end)
    assert verdict is not None and not verdict.echo and verdict.cleaned is not None
    before, after = spectral_error_db(mic, alone), spectral_error_db(verdict.cleaned, alone)
    print(f"delay {delay_s * 1000:.0f} ms gain {gain}: {100 * verdict.explained:.0f}% explained; distance from the "
          f"voice alone {before:.1f} dB as picked up, {after:.1f} dB with the echo taken out")  # fmt: skip
    assert after < before - 3.0, f"the echo was not taken out: {before:.1f} -> {after:.1f} dB"
