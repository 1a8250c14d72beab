"""Real browsers in a real room: headless Chromium with a fake mic, the gateway, and the real asr, mt
and tts workers on the test's own Redis streams. A speaks English; each listener reads a final caption
in their language with the expected words, after an interim caption with text that shows within
INTERIM_WITHIN_S of A's speech onset (while A still speaks), and hears translated speech (measured in the
page with a WebAudio analyser); A never gets its own translation. Latencies are measured from the end of A's
speech, as A's page heard it, to the caption and the first translated sound at each listener (both
pages run in one machine, so their clocks agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from benchmarks.asr_context import BROWSER_SENTENCE
from tests.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RAW_AUDIO,
    fake_mic_wav,
)

SENTENCE = BROWSER_SENTENCE
EXPECTED_WORDS = {"es": ("casa", "gato"), "ca": ("casa", "gat"), "gl": ("casa", "gato")}
JOIN_TIMEOUT_MS = 20_000
RESULT_TIMEOUT_MS = 60_000
SOUND_FRAMES = 10
# The first interim caption at every listener, after the speaker's speech onset (as the speaker's page heard
# it): a ceiling for a loaded machine, not the target (bench latency has that: p95 1.2 s). With three Chromiums
# and other developers' suites on the 2 cores (load average 12-28) it came 0.62-3.40 s after onset, and 4.96 s
# in the HTTPS variant, where a fresh ASR worker took 3.8 s for its very first draft (later ones 0.3-0.8 s);
# at load 29-42 drafts took 3.7-4.3 s each and nothing held.
INTERIM_WITHIN_S = 6.0
VIDEOS_PLAYING = (
    "n => [...document.querySelectorAll('[data-participant] video')].filter(v => v.videoWidth > 0).length >= n"
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Listener:
    name: str
    hear: str


def chromium(playwright: Any, mic_wav: Path, extra_args: Sequence[str] = ()) -> Browser:
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}", *extra_args]
    browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    return browser


def enter(browser: Browser, url: str, init_script: str = "") -> Page:
    """A page of the room at `url`, once it has joined (`init_script` runs before the page's own)."""
    page = browser.new_page()
    page.set_default_timeout(JOIN_TIMEOUT_MS)
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")
    return page


def room_url(base_url: str, room: str, name: str, speak: str, hear: str) -> str:
    return f"{base_url}/room/{room}?name={name}&speak={speak}&hear={hear}&{RAW_AUDIO}"


def wait_for_translation(page: Page, language: str) -> str:
    selector = f'[data-caption][data-lang="{language}"][data-final="true"]'
    page.wait_for_selector(selector, timeout=RESULT_TIMEOUT_MS)
    # more than a click: at least SOUND_FRAMES analyser readings (20 ms apart) above the speech level
    sounding = f"window.babelroom.metrics.translatedSoundAt.length > {SOUND_FRAMES}"
    page.wait_for_function(sounding, timeout=RESULT_TIMEOUT_MS)
    return page.inner_text(f"{selector} .text").lower()


def first_shown(page: Page, metric: str, language: str) -> float | None:
    """When the page first showed a caption in `language` (metric: captionsShownAt, final; interimShownAt)."""
    shown: dict[str, float] = page.evaluate(f"window.babelroom.metrics.{metric}")
    return min((at for key, at in shown.items() if key.endswith(f"|{language}")), default=None)


def speech_onset(speaker: Page) -> float:
    """When the speaker's page heard its sentence start (ms). The page learns from the gateway when its audio is
    received ("live"), and its microphone control says so."""
    metrics = "window.babelroom.metrics"
    speaker.wait_for_function(f"{metrics}.speechStarts.length > 0 && {metrics}.liveAt > 0", timeout=RESULT_TIMEOUT_MS)
    onset, live, opened = speaker.evaluate(f"[{metrics}.speechStarts[0], {metrics}.liveAt, {metrics}.micOpenedAt]")
    live_s, onset_s = (live - opened) / 1000, (onset - opened) / 1000
    print(f"Alice: live {live_s:.2f} s after her microphone opened, her speech started at {onset_s:.2f} s")
    assert speaker.get_attribute("#mic-status", "data-mic-status") == "live"
    return float(onset)


def latencies(speaker: Page, listener: Page, language: str) -> tuple[float, float]:
    speaker.wait_for_function("window.babelroom.metrics.speechEnds.length > 0", timeout=RESULT_TIMEOUT_MS)
    speech_end = speaker.evaluate("window.babelroom.metrics.speechEnds[0]")
    caption_at = first_shown(listener, "captionsShownAt", language)
    assert caption_at is not None
    sound_at = min(listener.evaluate("window.babelroom.metrics.translatedSoundAt"))
    return (caption_at - speech_end) / 1000, (sound_at - speech_end) / 1000


@dataclass(frozen=True)
class MeetingOptions:
    """What a variant of the meeting changes: browser flags, a script in each listener's page, and a check of
    each listener's page once it has heard the translation."""

    browser_args: Sequence[str] = ()
    listener_script: str = ""
    check_listener: Callable[[Page], None] | None = None


def run_meeting(
    base_url: str, tmp_path: Path, listeners: list[Listener], options: MeetingOptions = MeetingOptions()
) -> None:
    speech = fake_mic_wav(tmp_path / "speech.wav", SENTENCE)
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    room = f"e2e{int(time.time() * 1000) % 10**8}"
    with sync_playwright() as playwright:
        browsers = [chromium(playwright, quiet, options.browser_args) for _ in listeners]
        urls = [room_url(base_url, room, who.name, who.hear, who.hear) for who in listeners]
        pages = [enter(b, url, options.listener_script) for b, url in zip(browsers, urls, strict=True)]
        # joins last: everyone hears the first utterance
        speaker_browser = chromium(playwright, speech, options.browser_args)
        speaker = enter(speaker_browser, room_url(base_url, room, "Alice", "en", "en"))
        try:
            onset = speech_onset(speaker)
            for page, listener in zip(pages, listeners, strict=True):
                text = wait_for_translation(page, listener.hear)
                heard = speaker.inner_text('[data-caption][data-lang="en"][data-final="true"] .text')
                for word in EXPECTED_WORDS[listener.hear]:
                    assert word in text, f"{listener.name} read {text!r}, expected {word!r}; the speaker saw {heard!r}"
                caption_s, speech_s = latencies(speaker, page, listener.hear)
                who = f"{listener.name} ({listener.hear})"
                print(f"{who}: caption_latency_s={caption_s:.2f} speech_latency_s={speech_s:.2f}")
                assert 0 < caption_s < 30 and 0 < speech_s < 30
                interim_at = first_shown(page, "interimShownAt", listener.hear)
                final_at = first_shown(page, "captionsShownAt", listener.hear)
                assert interim_at is not None and final_at is not None, f"{who}: no interim caption with text"
                interim_s = (interim_at - onset) / 1000
                print(f"{who}: first interim caption {interim_s:.2f} s after speech onset, "
                      f"{(final_at - interim_at) / 1000:.2f} s before the final")  # fmt: skip
                assert interim_at < final_at, f"{who}: the interim caption came after the final one"
                assert interim_s <= INTERIM_WITHIN_S, f"{who}: first interim {interim_s:.2f} s after speech onset"
                if options.check_listener:
                    options.check_listener(page)
            # the speaker's own words come back as an English caption, never as a translation
            speaker.wait_for_selector('[data-caption][data-lang="en"][data-final="true"]', timeout=RESULT_TIMEOUT_MS)
            foreign = speaker.evaluate("document.querySelectorAll('[data-caption]:not([data-lang=\"en\"])').length")
            assert foreign == 0, "the speaker received a translation of their own speech"
            assert speaker.evaluate("window.babelroom.metrics.translatedSoundAt.length") == 0
            # renegotiation gave each listener the speaker's camera in the grid
            for page in pages:
                page.wait_for_function(VIDEOS_PLAYING, arg=2, timeout=JOIN_TIMEOUT_MS)
        finally:
            for browser in [*browsers, speaker_browser]:
                browser.close()


def test_two_participants_english_to_spanish(service: str, tmp_path: Path) -> None:
    run_meeting(service, tmp_path, [Listener("Bea", "es")])


def test_three_participants_three_languages(service: str, tmp_path: Path) -> None:
    run_meeting(service, tmp_path, [Listener("Bea", "es"), Listener("Carles", "ca")])
