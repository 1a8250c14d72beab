"""Loudspeakers in real Chromium: a page whose received audio reaches its own microphone.

An init script wraps RTCPeerConnection: each remote audio track (kept alive by a muted Audio element, which
Chrome needs) feeds a DelayNode, a ConvolverNode (a direct path and a decaying noise tail: the room's
reverberation) and a GainNode, mixed into the track getUserMedia returns. What the participant says is
mixed into the same track on cue (`window.loudspeaker.say`), so the test decides when speech and playback
overlap. The pages' fake microphones are silent files, taken raw (?raw_audio=1).

Alice (en, headphones) speaks; Bea (es) hears the Spanish translation on loudspeakers, at three delay/gain
settings in one room. Over Alice's utterances no caption attributed to Bea may be an echo; Bea's own
sentence right after the playback, and one spoken while the translation still plays, are recognised
(recall >= 0.5). With both on loudspeakers, the room goes quiet after the real utterances.

Run with BABELROOM_ECHO_GUARD=0 in the environment to see the same room without the gateway's guard.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from pipeline.audio import resample
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, MIC_RATE, RAW_AUDIO, fake_mic_wav, get_json
from tests.speech import espeak
from tests.test_echo import SETTINGS

pytestmark = pytest.mark.slow

JOIN_TIMEOUT_MS = 20_000
RESULT_TIMEOUT_MS = 60_000
MIN_OWN_SHARE = 0.2  # a caption with less of a participant's sentence in it is not their sentence
SETTLE_S = 5.0  # after a playback, echo segments have this long to close and come back as captions
QUIET_S = 15.0  # with both on loudspeakers, nothing may be captioned for this long after the last sentence
ALICE = (
    "good evening to everyone",
    "today we will talk about the budget of the project",
    "the house is big and the cat is black",
    "the meeting starts at nine in the morning",
    "we need more time for the tests",
    "thank you very much for your help",
)
BEA = (  # none like a translation of ALICE; Whisper base, espeak-ng es through an Opus round trip, clean: recall
    # 0.8-1.0 ("tengo dos hermanos y una hermana" and "el libro está sobre la mesa", 0.83 and 0.67, were replaced;
    # so was "vivimos cerca del río": said under the echo's last 0.5 s at 500 ms/0.9, its first word was misread in
    # 7 of 10 runs, once with a second word, recall 0.25); after the playback, then over it, at each setting
    "vivimos en una casa pequeña",
    "la puerta está abierta",
    "el café está muy caliente",
    "los niños juegan en el parque",
    "tenemos una casa en el campo",
    "me gusta mucho la música",
)

LOUDSPEAKER_JS = """
(() => {
  const ctx = new AudioContext({ sampleRate: 48000 });
  const mix = ctx.createMediaStreamDestination();
  const delay = ctx.createDelay(2.0);
  const room = ctx.createConvolver();
  const gain = ctx.createGain();
  const impulse = ctx.createBuffer(1, Math.round(0.3 * ctx.sampleRate), ctx.sampleRate);
  const tail = impulse.getChannelData(0);
  for (let i = 0; i < tail.length; i++) tail[i] = (Math.random() * 2 - 1) * 0.02 * Math.exp(-6.9 * i / tail.length);
  tail[0] = 1;
  room.normalize = false;
  room.buffer = impulse;
  delay.connect(room).connect(gain).connect(mix);
  gain.gain.value = 0;
  const kept = [];
  const pcs = [];
  const Native = window.RTCPeerConnection;
  function Wrapped(...args) {
    const pc = new Native(...args);
    pcs.push(pc);
    pc.addEventListener("track", (event) => {
      if (event.track.kind !== "audio") return;
      const stream = new MediaStream([event.track]);
      const keep = new Audio();
      keep.muted = true;
      keep.srcObject = stream;
      keep.play().catch(() => {});
      kept.push(keep);
      ctx.createMediaStreamSource(stream).connect(delay);
    });
    return pc;
  }
  Wrapped.prototype = Native.prototype;
  Object.setPrototypeOf(Wrapped, Native);
  window.RTCPeerConnection = Wrapped;
  const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    if (!constraints || !constraints.audio) return stream;
    await ctx.resume();
    ctx.createMediaStreamSource(new MediaStream(stream.getAudioTracks())).connect(mix);
    return new MediaStream([...mix.stream.getAudioTracks(), ...stream.getVideoTracks()]);
  };
  window.loudspeaker = {
    kept,
    async jitterMs() {  // the received audio's mean jitter-buffer delay so far, per inbound track
      const out = [];
      for (const pc of pcs) {
        (await pc.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "audio" && r.jitterBufferEmittedCount)
            out.push(Math.round(1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount));
        });
      }
      return out;
    },
    set(delaySeconds, level) { delay.delayTime.value = delaySeconds; gain.gain.value = level; },
    say(b64) {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const samples = new Float32Array(bytes.buffer);
      const buffer = ctx.createBuffer(1, samples.length, ctx.sampleRate);
      buffer.copyToChannel(samples, 0);
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(mix);
      source.start();
      return samples.length / ctx.sampleRate;
    },
  };
})();
"""

CAPTIONS_JS = """(speaker) => [...document.querySelectorAll('[data-caption][data-final="true"]')]
  .filter((el) => el.dataset.speaker === speaker)
  .map((el) => ({ id: el.dataset.captionId, lang: el.dataset.lang, text: el.querySelector('.text').textContent,
                  original: el.querySelector('.original').textContent }))"""


def words(text: str) -> set[str]:
    return {w.strip(".,;:!?¿¡\"'").lower() for w in text.replace("es:", " ").split() if w.strip(".,;:!?¿¡\"'")}


def recall(sentence: str, heard: str) -> float:
    expected = words(sentence)
    return len(expected & words(heard)) / len(expected)


def speech_b64(text: str, voice: str) -> str:
    samples = resample(espeak(text, voice), 16_000, MIC_RATE).astype("<f4")
    return base64.b64encode(samples.tobytes()).decode()


class Person:
    def __init__(self, browser: Browser, url: str, name: str, voice: str) -> None:
        self.name, self.voice = name, voice
        self.page: Page = browser.new_page()
        self.page.set_default_timeout(JOIN_TIMEOUT_MS)
        self.page.add_init_script(LOUDSPEAKER_JS)
        self.page.goto(url)
        self.page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")

    def loudspeaker(self, delay_s: float, gain: float) -> None:
        self.page.evaluate(f"window.loudspeaker.set({delay_s}, {gain})")

    def say(self, text: str) -> float:
        seconds: float = self.page.evaluate("b64 => window.loudspeaker.say(b64)", speech_b64(text, self.voice))
        return seconds

    def mic_level(self, seconds: float) -> float:
        """The loudest level the page's own meter read on its microphone over the next seconds."""
        levels = []
        for _ in range(round(seconds / 0.1)):
            levels.append(self.page.evaluate("window.babelroom.metrics.micRms"))
            time.sleep(0.1)
        return float(max(levels))

    def captions_by(self, speaker: str) -> list[dict[str, Any]]:
        captions: list[dict[str, Any]] = self.page.evaluate(CAPTIONS_JS, speaker)
        return captions

    def wait_playing(self, playing: bool) -> None:
        state = "false" if playing else "true"
        self.page.wait_for_function(f"document.getElementById('playing').hidden === {state}", timeout=RESULT_TIMEOUT_MS)

    def wait_captions(self, speaker: str, more_than: int) -> None:
        self.page.wait_for_function(
            f"n => ({CAPTIONS_JS})({speaker!r}).length > n", arg=more_than, timeout=RESULT_TIMEOUT_MS
        )


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[tuple[Browser, Browser]]:
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={quiet}"]
    with sync_playwright() as playwright:
        launched = [playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args) for _ in range(2)]
        try:
            yield launched[0], launched[1]
        finally:
            for browser in launched:
                browser.close()


def join(browsers: tuple[Browser, Browser], base_url: str) -> tuple[Person, Person]:
    room = f"echo{int(time.time() * 1000) % 10**8}"
    url = f"{base_url}/room/{room}?{RAW_AUDIO}&name={{}}&speak={{}}&hear={{}}"
    bea = Person(browsers[0], url.format("Bea", "es", "es"), "Bea", "es")
    alice = Person(browsers[1], url.format("Alice", "en", "en"), "Alice", "en")
    bea.page.wait_for_function("document.querySelectorAll('[data-participant]').length >= 2")
    return alice, bea


def share_in(caption: str, text: str) -> float:
    """How much of the caption's words the text holds."""
    heard = words(caption)
    return len(heard & words(text)) / max(len(heard), 1)


def echo_captions(listener: Person, speaker: Person, said: list[str]) -> list[str]:
    """Captions the listener got from the speaker that are more like what the speaker was played (the
    translations on the speaker's own page) than like anything the speaker said, or like nothing they said."""
    played = [c["text"] for c in speaker.captions_by(listener.name)]
    echoes = []
    for caption in (c["original"] for c in listener.captions_by(speaker.name)):
        own = max((share_in(caption, s) for s in said), default=0.0)
        if own < MIN_OWN_SHARE or max((share_in(caption, p) for p in played), default=0.0) > own:
            echoes.append(caption)
    return echoes


def bea_recall(bea: Person, before: int, sentence: str) -> float:
    """How many of the sentence's words Bea's own new captions (in Spanish) show."""
    bea.wait_captions("Bea", before)
    time.sleep(2.0)  # a sentence the segmenter cut in two comes as two captions
    new = bea.captions_by("Bea")[before:]
    return recall(sentence, " ".join(c["text"] for c in new))


def test_loudspeaker_echo_is_never_translated(service: str, browsers: tuple[Browser, Browser]) -> None:
    alice, bea = join(browsers, service)
    said: list[str] = []
    recalls: list[tuple[str, float]] = []
    utterances = iter(ALICE)
    own = iter(BEA)
    for delay_s, gain in SETTINGS:
        bea.loudspeaker(delay_s, gain)
        # Alice speaks; Bea hears the translation on her loudspeakers, then says her own sentence
        alice.say(next(utterances))
        bea.wait_playing(True)
        print("echo level at Bea's microphone during playback:", bea.mic_level(2.0))
        print("Bea's jitter buffers (ms):", bea.page.evaluate("window.loudspeaker.jitterMs()"))
        bea.wait_playing(False)
        before = len(bea.captions_by("Bea"))
        sentence = next(own)
        bea.say(sentence)
        said.append(sentence)
        recalls.append(("after", bea_recall(bea, before, sentence)))
        time.sleep(SETTLE_S)
        # Alice speaks again; Bea talks while the translation still plays (double talk)
        alice.say(next(utterances))
        bea.wait_playing(True)
        time.sleep(0.5)
        before = len(bea.captions_by("Bea"))
        sentence = next(own)
        bea.say(sentence)
        said.append(sentence)
        recalls.append(("during", bea_recall(bea, before, sentence)))
        bea.wait_playing(False)
        time.sleep(SETTLE_S)
        print(f"delay {delay_s * 1000:.0f} ms gain {gain}: echo captions so far {len(echo_captions(alice, bea, said))}")
    echoes = echo_captions(alice, bea, said)
    _, health = get_json(f"{service}/healthz")
    print("Bea's captions at Alice's:", [c["original"] for c in alice.captions_by("Bea")])
    print(f"Alice's utterances: 6; echo captions attributed to Bea: {len(echoes)} {echoes}")
    print(f"Bea's sentences, recall: {[(when, round(r, 2)) for when, r in recalls]}; guard: {health.get('echo')}")
    assert not echoes, f"Alice read Bea's loudspeaker echo as Bea's speech: {echoes}"
    for when, value in recalls:
        assert value >= 0.5, f"Bea's sentence {when} the playback was recognised with recall {value:.2f}"


def test_two_loudspeakers_go_quiet(service: str, browsers: tuple[Browser, Browser]) -> None:
    alice, bea = join(browsers, service)
    delay_s, gain = SETTINGS[1]
    alice.loudspeaker(delay_s, gain)
    bea.loudspeaker(delay_s, gain)
    alice.say(ALICE[2])
    bea.wait_playing(True)
    bea.wait_playing(False)
    time.sleep(SETTLE_S)
    bea.say(BEA[0])
    alice.wait_playing(True)
    alice.wait_playing(False)
    time.sleep(SETTLE_S)
    counts = len(alice.captions_by("Bea")), len(bea.captions_by("Alice"))
    time.sleep(QUIET_S)
    later = len(alice.captions_by("Bea")), len(bea.captions_by("Alice"))
    _, health = get_json(f"{service}/healthz")
    print(f"captions (Bea at Alice, Alice at Bea): {counts}, {QUIET_S:.0f} s later {later}; guard {health.get('echo')}")
    assert later == counts, "the room kept talking to itself after the real utterances"
    echoes = echo_captions(alice, bea, [BEA[0]]) + echo_captions(bea, alice, [ALICE[2]])
    assert not echoes, f"captions of echo: {echoes}"
