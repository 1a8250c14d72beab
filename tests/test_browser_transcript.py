"""The meeting's transcript in real Chromium: two pages (Ana speaks English, Ben Spanish) through the gateway, a
real Janus in the suite's network namespace and the real asr, mt and tts workers.

Ana turns the transcript on; Ben's page shows at once that it is on and that Ana turned it on. Each says two
sentences (mixed into their page's microphone on cue). Ana downloads the Spanish WebVTT from her page and Ben
the English text from his: each matches, in order, the final captions the other's page showed in that
language, with the speakers' names and rising times, and the WebVTT parses with webvtt-py (strict). One
meeting for the module; each test checks one part of it.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import webvtt
from playwright.sync_api import Browser, Page, sync_playwright

from babelroom import janus
from babelroom.supervisor import free_port
from tests.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RAW_AUDIO,
    fake_mic_wav,
    gateway_command,
    processes,
    service_env,
    wait_ready,
    worker_commands,
)
from tests.test_browser_echo import ALICE, BEA, RESULT_TIMEOUT_MS, Person

pytestmark = pytest.mark.slow

ANA_SAYS = (ALICE[2], ALICE[3])  # "the house is big and the cat is black", "the meeting starts at nine ..."
BEN_SAYS = (BEA[5], BEA[3])  # "me gusta mucho la música", "los niños juegan en el parque"
SETTLED_S = 4.0  # no new caption for this long: every segment of the meeting has come back
FINAL_CAPTIONS_JS = """(lang) => [...document.querySelectorAll('[data-caption][data-final="true"]')]
  .filter((el) => el.dataset.lang === lang)
  .map((el) => [el.dataset.speaker, el.querySelector('.text').textContent.trim()])"""
NOTICE = "[data-transcript-notice]"
TXT_LINE = re.compile(r"\[(\d\d):(\d\d):(\d\d)\] (.+?): (.*)")


@dataclass
class Meeting:
    ana: Person
    ben: Person
    base_url: str
    room: str
    shots: Path


@pytest.fixture(scope="module")
def meeting(
    redis_url: str, janus_config: janus.JanusConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Meeting]:
    folder = tmp_path_factory.mktemp("transcript")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(redis_url, f"tr{int(time.time()) % 10**6}", janus.gateway_env(janus_config))
    quiet = fake_mic_wav(folder / "quiet.wav", None)
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={quiet}"]
    with processes([gateway_command(port), *worker_commands()], env, folder) as procs, sync_playwright() as playwright:
        wait_ready(base_url, procs)
        browsers: list[Browser] = [
            playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args) for _ in range(2)
        ]
        try:
            room = f"minutes{int(time.time() * 1000) % 10**8}"
            url = f"{base_url}/room/{room}?{RAW_AUDIO}&name={{}}&speak={{}}&hear={{}}"
            ben = Person(browsers[0], url.format("Ben", "es", "es"), "Ben", "es")
            ana = Person(browsers[1], url.format("Ana", "en", "en"), "Ana", "en")
            ben.page.wait_for_function("document.querySelectorAll('[data-participant]').length >= 2")
            yield Meeting(ana, ben, base_url, room, folder)
        finally:
            for browser in browsers:
                browser.close()


def shown(page: Page, lang: str) -> list[tuple[str, str]]:
    return [tuple(pair) for pair in page.evaluate(FINAL_CAPTIONS_JS, lang)]


def floor_free(page: Page) -> None:
    page.wait_for_function("document.getElementById('floor').hidden === true", timeout=RESULT_TIMEOUT_MS)


def speak(person: Person, sentence: str, listener: Person) -> None:
    """`person` says `sentence`; returns once the listener and the speaker both show its final caption."""
    heard, own = len(listener.captions_by(person.name)), len(person.captions_by(person.name))
    person.say(sentence)
    listener.wait_captions(person.name, heard)
    person.wait_captions(person.name, own)
    time.sleep(1.0)


def settle(*pages: Page) -> None:
    """Until no page has shown a new final caption for SETTLED_S."""
    counts = None
    while counts != (counts := [len(shown(p, lang)) for p in pages for lang in ("en", "es")]):
        time.sleep(SETTLED_S)


def download(person: Person, lang: str, fmt: str) -> str:
    page = person.page
    page.select_option("[data-transcript-lang]", lang)
    page.select_option("[data-transcript-format]", fmt)
    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as info:
        page.click("[data-transcript-download]")
    return Path(info.value.path()).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def spoken(meeting: Meeting) -> Meeting:
    """The meeting itself: Ana turns the transcript on, then each says two sentences."""
    ana, ben = meeting.ana, meeting.ben
    ana.page.click("[data-transcript-toggle]")
    ben.page.wait_for_selector(f"{NOTICE}:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    for sentence in ANA_SAYS:
        speak(ana, sentence, ben)
    floor_free(ben.page)
    for sentence in BEN_SAYS:
        speak(ben, sentence, ana)
    settle(ana.page, ben.page)
    return meeting


def test_turning_it_on_shows_on_every_page_who_did(meeting: Meeting) -> None:
    ana, ben = meeting.ana, meeting.ben
    assert ana.page.is_hidden(NOTICE) and ben.page.is_hidden(NOTICE), "off by default"
    assert ana.page.is_hidden("[data-transcript-download]"), "nothing to download before it was ever on"
    ana.page.click("[data-transcript-toggle]")
    ben.page.wait_for_selector(f"{NOTICE}:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    notice = ben.page.inner_text(NOTICE)
    print(f"Ben's page: {notice!r}")
    assert "Transcript on" in notice and "Ana" in notice
    assert ana.page.inner_text("[data-transcript-toggle]") == "Stop transcript"
    ana.page.click("[data-transcript-toggle]")  # off again: the meeting (fixture `spoken`) turns it on for real
    ben.page.wait_for_selector(f"{NOTICE}[hidden]", state="attached", timeout=RESULT_TIMEOUT_MS)


def test_ana_downloads_the_spanish_webvtt_that_ben_read(spoken: Meeting) -> None:
    text = download(spoken.ana, "es", "vtt")
    (spoken.shots / "ana-es.vtt").write_text(text)
    cues = webvtt.from_string(text, strict=True).captions
    in_file = [(html.unescape(c.voice or ""), html.unescape(c.text).strip()) for c in cues]
    on_page = shown(spoken.ben.page, "es")
    print("Ben's page (es):", on_page, "\nAna's Spanish WebVTT:", in_file)
    assert in_file == on_page
    assert {speaker for speaker, _ in in_file} == {"Ana", "Ben"} and len(in_file) >= 4
    starts = [c.start_time.in_milliseconds() for c in cues]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), f"times rise: {starts}"
    assert all(c.end_time.in_milliseconds() > c.start_time.in_milliseconds() for c in cues)


def test_ben_downloads_the_english_text_that_ana_read(spoken: Meeting) -> None:
    text = download(spoken.ben, "en", "txt")
    paragraphs = [TXT_LINE.fullmatch(p) for p in text.strip().split("\n\n")]
    assert all(paragraphs), text
    in_file = [(m.group(4), m.group(5).strip()) for m in paragraphs if m]
    on_page = shown(spoken.ana.page, "en")
    print("Ana's page (en):", on_page, "\nBen's English text:", in_file)
    assert in_file == on_page
    seconds = [int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) for m in paragraphs if m]
    assert seconds == sorted(seconds) and seconds[-1] > seconds[0], f"times rise: {seconds}"


def test_the_page_with_the_transcript_on(spoken: Meeting) -> None:
    """The picture in the README: Ben's page, the transcript on, the meeting's captions."""
    page = spoken.ben.page
    assert "Ana" in page.inner_text(NOTICE)
    assert page.is_visible("[data-transcript-download]")
    path = spoken.shots / "transcript-on.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
