"""The room page as a new user meets it, in headless Chromium against the real gateway and Janus: what the
form offers and remembers, how a bad link is explained, what happens when the connection is lost
(a banner, then the page rejoins by itself with the same name and languages) or when one leaves, how an
overloaded service shows (the `service` pill, for a page that joins while degraded), and what a host's page
can do (remove a guest, who stays out until given a new link; end the meeting for everyone)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, sync_playwright

from babelroom import janus
from babelroom.janus import JanusConfig
from babelroom.supervisor import free_port
from gateway.web.tokens import issue_token
from pipeline.audio import float_to_pcm16
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import SpeechSegment
from tests.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RAW_AUDIO,
    fake_mic_wav,
    gateway_command,
    get_json,
    processes,
    service_env,
)
from tests.speech import espeak, silence

TIMEOUT_MS = 20_000
CONNECTED = "window.babelroom.state.connected === true"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    with sync_playwright() as playwright:
        args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={quiet}"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("window.babelroom && window.babelroom.state.config !== null")
    return page


def test_the_form_offers_lipsync_off_by_default_and_keeps_languages_apart(service: str, browser: Browser) -> None:
    page = open_page(browser, f"{service}/room/demo")  # the service runs a lipsync worker: lip-sync is offered
    assert page.is_enabled("#opt-lipsync") and not page.is_checked("#opt-lipsync"), "opt-in"
    assert not page.is_visible("#lipsync-option [data-unavailable]")
    assert not page.is_checked("#face-yes") and not page.is_checked("#face-no"), "consent is never pre-chosen"
    page.select_option("#hear", "ca")
    page.select_option("#speak", "es")
    assert page.input_value("#hear") == "ca", "choosing what I speak must not change what I hear"

    page = open_page(browser, f"{service}/room/demo?name=Bea&speak=es&hear=xx")
    error = page.inner_text("#join-error")
    assert '"xx"' in error and "hear=xx" in error and page.is_visible("#lobby"), error


def test_a_lost_connection_shows_a_banner_and_rejoins_with_the_same_profile(service: str, browser: Browser) -> None:
    page = open_page(browser, f"{service}/room/rejoin?name=Ana&speak=en&hear=es&{RAW_AUDIO}")
    page.wait_for_function(CONNECTED)
    first = page.evaluate("window.babelroom.state.me.id")
    ticket = page.evaluate("window.babelroom.state.me.ticket")
    stored = json.loads(page.evaluate("localStorage.getItem('babelroom.profile')"))
    assert (stored["name"], stored["speak"], stored["hear"]) == ("Ana", "en", "es"), "remembered for the next visit"

    # The server drops the session (as a restart or a network loss would): the page must notice.
    request = urllib.request.Request(f"{service}/api/sessions/{first}/leave?ticket={ticket}", method="POST")
    urllib.request.urlopen(request, timeout=5).close()
    page.wait_for_function("!document.getElementById('banner').hidden")
    assert "Reconnecting" in page.inner_text("#banner")
    assert "(the session was ended by a leave request)" in page.inner_text("#banner"), "the server's reason shows"
    page.wait_for_function(f"window.babelroom.state.connected && window.babelroom.state.me?.id !== '{first}'")
    page.wait_for_function("document.getElementById('banner').hidden")
    roster = page.evaluate("window.babelroom.state.roster")
    assert [(p["name"], p["speak"], p["hear"]) for p in roster] == [("Ana", "en", "es")]

    page.click("#leave")
    page.wait_for_selector("#lobby-notice", state="visible")
    assert "You left" in page.inner_text("#lobby-notice") and page.url.startswith(service)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{service}/healthz", timeout=5) as reply:
            if json.loads(reply.read())["participants"] == 0:
                break
        time.sleep(0.2)
    else:
        raise AssertionError("leaving did not end the session")


def health_until(base_url: str, condition: Any, what: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    health: Any = None
    while time.monotonic() < deadline:
        _, health = get_json(f"{base_url}/healthz")
        if health and condition(health):
            return dict(health)
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout_s} s: {health}")


async def publish_speech(redis_url: str, prefix: str) -> None:
    """One real segment for the ASR worker, so that it measures (and reports) its time per segment."""
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=prefix))
    speech = float_to_pcm16([*silence(0.2), *espeak("the house is big"), *silence(0.2)])
    segment = SpeechSegment(room="load", speaker="x", seq=1, language="en", targets=("es",),
                            end_sample=len(speech) // 2, pcm=speech).stamped("captured")  # fmt: skip
    await bus.publish(segment)
    await bus.close()


def test_a_page_joining_a_degraded_service_shows_the_service_pill(
    redis_url: str, janus_config: JanusConfig, stream_prefix: str, browser: Browser, tmp_path: Path
) -> None:
    # A late bound of 0.2 s: one real ASR segment's measured time predicts captions past it, so the
    # overload policy steps down to captions only, and stays there (nothing makes the ASR faster).
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(redis_url, stream_prefix, {**janus.gateway_env(janus_config), "BABELROOM_LATE_BOUND_S": "0.2"})
    asr = [sys.executable, "-m", "babelroom.cli", "worker", "asr"]
    with processes([gateway_command(port), asr], env, tmp_path):
        health_until(base_url, lambda h: h["janus"] == "connected" and h["workers"].get("asr"), "ASR worker")
        with ThreadPoolExecutor(1) as thread:  # Playwright's own loop runs in this one
            thread.submit(asyncio.run, publish_speech(redis_url, stream_prefix)).result()
        health_until(base_url, lambda h: h["service"]["level"] == "captions_only", "degradation")
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert "babelroom_degradation_level 2.0" in metrics, "the metrics show the level too"
        page = open_page(browser, f"{base_url}/room/busy?name=Ana&speak=en&hear=es&{RAW_AUDIO}")
        page.wait_for_function(CONNECTED)
        page.wait_for_selector("#service", state="visible")
        assert "captions continue" in page.inner_text("#service")
        assert page.get_attribute("#service", "data-level") == "captions_only"
        page.screenshot(path=str(tmp_path / "degraded.png"))


def test_a_host_removes_a_guest_who_cannot_return_with_the_same_link_then_ends_the_meeting(
    redis_url: str, janus_config: JanusConfig, stream_prefix: str, browser: Browser, tmp_path: Path
) -> None:
    """A host's page (a `--role host` link) removes a guest: the guest's page says so and stays out, the same
    link is refused, a reissued one joins; then the host ends the meeting and every page says so."""
    secret, room = "page-secret", "hosted"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    extra = {**janus.gateway_env(janus_config), "BABELROOM_OPEN_ROOMS": "0", "BABELROOM_TOKEN_SECRET": secret}
    env = service_env(redis_url, stream_prefix, extra)

    def enter(name: str, token: str) -> Page:
        page = open_page(browser, f"{base_url}/room/{room}?name={name}&speak=en&hear=en&token={token}&{RAW_AUDIO}")
        page.on("dialog", lambda dialog: dialog.accept())  # "Remove ...?", "End the meeting for everyone?"
        page.wait_for_function(CONNECTED)
        return page

    with processes([gateway_command(port)], env, tmp_path):
        health_until(base_url, lambda h: h["janus"] == "connected", "Janus")
        host = enter("Hosta", issue_token(secret, room, "Hosta", role="host"))
        guest_link = issue_token(secret, room, "Gus")
        guest = enter("Gus", guest_link)
        assert host.is_visible("#end-meeting") and not guest.is_visible("#end-meeting"), "only a host may end it"
        gus = guest.evaluate("window.babelroom.state.me.id")
        host.click(f'[data-participant="{gus}"] [data-remove]')

        guest.wait_for_selector("#lobby-notice", state="visible")
        notice = guest.inner_text("#lobby-notice")
        assert "Hosta removed you" in notice and guest.get_attribute("#lobby-notice", "data-exit") == "removed", notice
        assert not guest.evaluate("[...document.querySelectorAll('[data-remove]')].some((b) => !b.hidden)")
        time.sleep(2)  # the page must not rejoin by itself
        assert guest.evaluate("window.babelroom.metrics.rejoins") == 0 and guest.is_visible("#lobby")
        guest.click("#join-button")  # the same link, again
        guest.wait_for_selector("#join-error", state="visible")
        assert "removed you" in guest.inner_text("#join-error"), guest.inner_text("#join-error")
        status, body = post_json(
            f"{base_url}/api/rooms/{room}/join", {"speak": "en", "hear": "en", "token": guest_link}
        )
        assert status == 403 and "removed" in body["error"], (status, body)
        back = enter("Gus", issue_token(secret, room, "Gus"))  # a reissued link works
        guest.screenshot(path=str(tmp_path / "removed.png"))

        host.click("#end-meeting")
        for page in (host, back):
            page.wait_for_selector("#lobby-notice", state="visible")
            assert "Hosta ended the meeting" in page.inner_text("#lobby-notice")
            assert page.get_attribute("#lobby-notice", "data-exit") == "ended"
        health_until(base_url, lambda h: h["participants"] == 0, "everyone gone", timeout_s=10)


def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_microphone_says_connecting_until_the_room_hears_it_then_live_with_its_level(
    service: str, tmp_path: Path
) -> None:
    """Issue 27: until the gateway receives the page's audio the microphone control says so; the gateway's "live"
    event (held back here, to see the state before it) turns it live, and its level meter follows the voice."""
    speech = fake_mic_wav(tmp_path / "speech.wav", "the house is big and the cat is black")
    held: list[str] = []
    sockets: list[WebSocketRoute] = []
    holding = [True]

    def hold_live(route: WebSocketRoute, message: str | bytes) -> None:
        if holding[0] and isinstance(message, str) and json.loads(message).get("type") == "live":
            held.append(message)
        else:
            route.send(message)

    def events(route: WebSocketRoute) -> None:
        sockets.append(route)
        route.connect_to_server().on_message(lambda message: hold_live(route, message))

    with sync_playwright() as playwright:
        args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={speech}"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.set_default_timeout(TIMEOUT_MS)
            page.route_web_socket(re.compile(r".*/api/sessions/[^/]+/events.*"), events)
            page.goto(f"{service}/room/greeting?name=Sofia&speak=es&hear=es&{RAW_AUDIO}")
            page.wait_for_function(CONNECTED)  # its media is up in Janus; the gateway's word is held back
            page.wait_for_function("window.babelroom.metrics.micRms > 0.02")  # it is talking already
            assert page.get_attribute("#mic-status", "data-mic-status") == "connecting"
            assert page.inner_text("#mic-label") == "Connecting your microphone…"
            assert not page.is_visible("#mic-level"), "no level meter until the room hears it"
            page.screenshot(path=str(tmp_path / "mic-connecting.png"), full_page=True)
            heard = [m for m in map(json.loads, held) if m["live"]]
            for _ in range(100):  # the page's own calls dispatch what the socket received meanwhile
                if heard:
                    break
                page.wait_for_timeout(100)
                heard = [m for m in map(json.loads, held) if m["live"]]
            assert heard and heard[0]["heard_at"] > 0, f"the gateway never said it hears the page: {held}"
            holding[0] = False
            for message in held:
                sockets[-1].send(message)
            page.wait_for_function("document.getElementById('mic-status').dataset.micStatus === 'live'")
            assert page.inner_text("#mic-label") == "Live: the room hears you"
            page.wait_for_function("parseFloat(document.getElementById('mic-level').style.width) > 30")
            page.screenshot(path=str(tmp_path / "mic-live.png"), full_page=True)
            page.click("#mute")
            assert page.get_attribute("#mic-status", "data-mic-status") == "muted"
        finally:
            browser.close()
