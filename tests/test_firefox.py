"""Firefox in a real room: a listener in headless Firefox ESR (driven over WebDriver BiDi), a speaker in headless
Chromium with a fake mic, the gateway, and the real asr, mt and tts workers on the test's own Redis streams.

A speaks English in Chromium; B listens in Firefox hearing Spanish. B's page shows a final Spanish caption with
the expected words, receives non-silent translated audio on its translated-audio element, and shows A's camera in
its grid. Latencies are measured from the end of A's speech, as A's page heard it, to B's caption and B's first
translated sound (both browsers run on one machine, so their clocks agree).

Firefox limitation, and how the sound is measured instead: the room page meters translated audio with a WebAudio
AnalyserNode, but headless Firefox here has no audio output device (no PulseAudio server, no ALSA card), so cubeb
cannot open an output stream (MOZ_LOG=cubeb:4,MediaTrackGraph:3 shows "couldn't init pulse's context" and "Output
number of channels is 0"; the prefs media.cubeb.backend=alsa and media.cubeb.force_null_context do not help), and
Firefox keeps every AudioContext "suspended" (`resume()` does not settle), so the page's analyser reads nothing. The
<audio> element still plays (its currentTime, and its track's totalSamplesDuration, advance in real time), and
libwebrtc meters the audio it decodes for that track. So the test samples, in the page, the inbound-rtp stats of the
translated-audio element's own track (`pc.getStats(track)` on the subscription that carries it): the level over each
~50 ms is sqrt(Δ totalAudioEnergy / Δ totalSamplesDuration), counted as sound above the page's speech threshold.
Where Firefox has a sound device and the page's AudioContext runs, the page's own analyser must hear the
translation too.

Firefox's fake microphone is a steady tone, not speech, so B listens muted (the Chromium listeners send a silent WAV
instead).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from benchmarks.asr_context import BROWSER_SENTENCE
from tests.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RAW_AUDIO,
    fake_mic_wav,
)
from tests.firefox import Tab, launch_firefox

SENTENCE = BROWSER_SENTENCE
EXPECTED_WORDS = ("casa", "gato")
JOIN_TIMEOUT_S = 20.0
RESULT_TIMEOUT_S = 60.0
SOUND_FRAMES = 10
CONNECTED = "window.babelroom && window.babelroom.state.connected === true"
FINAL_CAPTION = '[data-caption][data-lang="es"][data-final="true"][data-speaker="Alice"]'
SPEECH_LEVEL = 0.02  # the room page's SPEECH_RMS
# Firefox: the level of decoded audio on the translated-audio element's track, from its inbound-rtp stats
STATS_METER = f"""(() => {{
  const meter = window.statsMeter = {{ soundAt: [], level: 0, readings: 0 }};
  let last = null;
  const tick = async () => {{
    const pc = window.babelroom.state.translatedPc;
    const stream = document.querySelector("[data-translated-audio]").srcObject;
    const track = stream && stream.getAudioTracks()[0];
    if (pc && track) {{
      for (const r of (await pc.getStats(track)).values()) {{
        if (r.type !== "inbound-rtp" || r.totalSamplesDuration === undefined) continue;
        const seconds = last ? r.totalSamplesDuration - last.totalSamplesDuration : 0;
        if (seconds > 0) {{
          meter.level = Math.sqrt(Math.max(0, r.totalAudioEnergy - last.totalAudioEnergy) / seconds);
          meter.readings += 1;
          if (meter.level > {SPEECH_LEVEL}) meter.soundAt.push(Date.now());
        }}
        last = r;
      }}
    }}
    if (!window.babelroom.state.left) setTimeout(tick, 50);
  }};
  tick();
  return true;
}})()"""
ELEMENT_PLAYING = """(() => {
  const el = document.querySelector("[data-translated-audio]");
  return !el.paused && el.currentTime > 0 && el.srcObject.getAudioTracks()[0].readyState === "live";
})()"""
VIDEOS_PLAYING = "[...document.querySelectorAll('[data-participant] video')].filter(v => v.videoWidth > 0).length >= 2"

pytestmark = pytest.mark.slow


async def firefox_join(tab: Tab, base_url: str, room: str) -> None:
    await tab.navigate(f"{base_url}/room/{room}?name=Bea&speak=es&hear=es&{RAW_AUDIO}")
    await tab.wait_for(CONNECTED, JOIN_TIMEOUT_S, "Bea connected")
    # Firefox's fake microphone is a steady tone, not speech: Bea listens with her mic muted
    await tab.evaluate("document.getElementById('mute').click()")
    await tab.wait_for("window.babelroom.state.muted", JOIN_TIMEOUT_S, "Bea muted")
    await tab.evaluate(STATS_METER)


async def chromium_speaker(browser: Browser, base_url: str, room: str) -> Page:
    page = await browser.new_page()
    page.set_default_timeout(JOIN_TIMEOUT_S * 1000)
    await page.goto(f"{base_url}/room/{room}?name=Alice&speak=en&hear=en&{RAW_AUDIO}")
    await page.wait_for_function(CONNECTED)
    return page


async def test_firefox_listener_reads_and_hears_spanish(service: str, tmp_path: Path) -> None:
    speech = fake_mic_wav(tmp_path / "speech.wav", SENTENCE)
    room = f"ff{int(time.time() * 1000) % 10**8}"
    async with launch_firefox(tmp_path) as firefox, async_playwright() as playwright:
        tab = await firefox.tab()
        await firefox_join(tab, service, room)
        args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={speech}"]
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            speaker = await chromium_speaker(browser, service, room)  # joins last: Bea hears the first utterance
            text = await tab.wait_for(
                f"document.querySelector('{FINAL_CAPTION} .text')?.textContent", RESULT_TIMEOUT_S, "a final caption"
            )
            for word in EXPECTED_WORDS:
                assert word in text.lower(), f"Bea (Firefox) read {text!r}, expected {word!r}"
            sounding = f"window.statsMeter.soundAt.length > {SOUND_FRAMES}"
            await tab.wait_for(sounding, RESULT_TIMEOUT_S, "translated sound (inbound-rtp energy)")
            sound_at = min(await tab.evaluate("window.statsMeter.soundAt"))
            assert await tab.evaluate(ELEMENT_PLAYING), "Bea's translated-audio element is not playing its track"
            audio_context = await tab.evaluate("audioContext?.state")
            print(f"firefox_audio_context={audio_context}")
            if audio_context == "running":  # only where Firefox has a sound device
                page_meter = f"window.babelroom.metrics.translatedSoundAt.length > {SOUND_FRAMES}"
                await tab.wait_for(page_meter, RESULT_TIMEOUT_S, "translated sound (the page's analyser)")
            await speaker.wait_for_function("window.babelroom.metrics.speechEnds.length > 0")
            speech_end: float = await speaker.evaluate("window.babelroom.metrics.speechEnds[0]")
            shown: dict[str, float] = await tab.evaluate("window.babelroom.metrics.captionsShownAt")
            caption_at = min(at for key, at in shown.items() if key.endswith("|es"))
            caption_s, speech_s = (caption_at - speech_end) / 1000, (sound_at - speech_end) / 1000
            print(f"firefox_caption_latency_s={caption_s:.2f} firefox_speech_latency_s={speech_s:.2f}")
            assert 0 < caption_s < 30 and 0 < speech_s < 30
            await tab.wait_for(VIDEOS_PLAYING, JOIN_TIMEOUT_S, "Alice's camera in Bea's grid")
        finally:
            await browser.close()
