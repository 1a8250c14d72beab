"""Lip-sync end to end in real browsers: the speaker's Chromium has a fake camera playing a talking head
made from a real face photo (benchmarks/talking_head.py) and a fake mic saying an English sentence; a
Spanish listener asked for lip-synced video. The gateway, the real workers (lipsync included) and Janus
run as in production.

What the listener sees is measured in its own page: the speaker's tile is drawn to a canvas every
33 ms while the translation plays, and the translated speech's loudness is read from the page's meter.
Mouth opening (FaceMesh) on those frames against that loudness, both band-passed 2-8 Hz, gives the
sync figure of workers/lipsync_metric.py. With the speaker's consent the mouth follows the Spanish
speech; without it no frame leaves the gateway (its counters, and no frames key in Redis) and the
tile shows the speaker's camera as it is.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from benchmarks.talking_head import talking_head_frames
from pipeline.frames import Frame, from_jpeg
from pipeline.video import write_y4m
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, fake_mic_wav, get_json
from tests.test_browser_e2e import JOIN_TIMEOUT_MS, SENTENCE, wait_for_translation
from workers.lipsync_metric import PASS_CORRELATION, PASS_LAG_FRAMES, SyncScore, mouth_openings, sync_score

pytestmark = pytest.mark.slow

FPS = 15  # the feed's rate (gateway/video.py FEED_FPS), and the grid the figures are computed on
CAMERA_S = 8.0  # Chromium loops the file
# Frames of the speaker's tile and meter readings, kept in the listener's page while its feed plays.
CAPTURE_JS = """() => {
  const cap = window.lipsyncCapture = { frames: [], levels: [] };
  const canvas = document.createElement("canvas");
  canvas.width = 320; canvas.height = 240;
  const context = canvas.getContext("2d");
  setInterval(() => cap.levels.push([Date.now(), window.babelroom.metrics.translatedRms]), 20);
  setInterval(() => {
    const video = document.querySelector(`[data-participant="${cap.speaker}"] video`);
    if (!cap.speaker || !video || video.videoWidth === 0 || cap.frames.length > 600) return;
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const fromFeed = video.parentElement.hasAttribute("data-translated-video");
    cap.frames.push([Date.now(), canvas.toDataURL("image/jpeg", 0.9), fromFeed]);
  }, 33);
}"""
SPEECH_RMS = 0.01  # the page's threshold for translated sound (room.js SPEECH_RMS)
MARGIN_S = 0.5  # frames kept either side of the translated speech


def camera_y4m(path: Path) -> Path:
    write_y4m(path, talking_head_frames(CAMERA_S, FPS), FPS)
    return path


def enter(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    page.set_default_timeout(JOIN_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")
    return page


def launch(playwright: Playwright, mic: Path, camera: Path | None = None) -> Browser:
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}"]
    if camera is not None:
        args.append(f"--use-file-for-fake-video-capture={camera}")
    browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    return browser


def on_grid(capture: dict[str, Any]) -> tuple[list[Frame], np.ndarray, int]:
    """The captured frames and loudness on a FPS grid over the translated speech (with a margin), and
    how many of those frames the page showed from the translation feed."""
    levels = np.asarray(capture["levels"], dtype=np.float64)
    loud = levels[levels[:, 1] > SPEECH_RMS, 0]
    assert loud.size > 10, "no translated speech was heard"
    start, end = loud.min() - MARGIN_S * 1000, loud.max() + MARGIN_S * 1000
    shots = [(at, data, translated) for at, data, translated in capture["frames"] if start <= at <= end]
    assert len(shots) > FPS, f"only {len(shots)} frames of the speaker's tile during the translation"
    times = np.array([at for at, _, _ in shots])
    ticks = np.arange(start, end, 1000 / FPS)
    picks = np.clip(np.searchsorted(times, ticks, side="right") - 1, 0, len(shots) - 1)
    decoded: dict[int, Frame] = {}
    frames = [decoded.setdefault(int(i), jpeg_frame(shots[int(i)][1])) for i in picks]
    loudness = np.array(
        [levels[(levels[:, 0] >= t) & (levels[:, 0] < t + 1000 / FPS), 1].mean(initial=0.0) for t in ticks]
    )
    return frames, loudness, sum(1 for i in picks if shots[int(i)][2])


def jpeg_frame(data_url: str) -> Frame:
    return from_jpeg(base64.b64decode(data_url.split(",", 1)[1]))


def meeting(base_url: str, tmp_path: Path, face: bool, screenshot: Path | None = None) -> tuple[SyncScore, int, int]:
    speech = fake_mic_wav(tmp_path / "speech.wav", SENTENCE)
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    camera = camera_y4m(tmp_path / "face.y4m")
    room = f"lip{int(time.time() * 1000) % 10**8}"
    with sync_playwright() as playwright:
        listener_browser = launch(playwright, quiet)
        speaker_browser = launch(playwright, speech, camera)
        try:
            listener = enter(listener_browser, f"{base_url}/room/{room}?name=Bea&speak=es&hear=es&lipsync=1")
            listener.evaluate(CAPTURE_JS)
            speaker = enter(speaker_browser, f"{base_url}/room/{room}?name=Alice&speak=en&hear=en&face={int(face)}")
            listener.evaluate(
                "id => { window.lipsyncCapture.speaker = id; }", speaker.evaluate("window.babelroom.state.me.id")
            )
            wait_for_translation(listener, "es")
            listener.wait_for_function("window.babelroom.metrics.translatedRms < 0.005", timeout=30_000)
            time.sleep(1.0)  # the tail of the speech and the margin
            if screenshot is not None:
                save_lipsynced_screenshot(listener, screenshot)
            capture: dict[str, Any] = listener.evaluate("window.lipsyncCapture")
        finally:
            listener_browser.close()
            speaker_browser.close()
    frames, loudness, from_feed = on_grid(capture)
    score = sync_score(mouth_openings(frames), loudness, FPS)
    return score, len(frames), from_feed


def save_lipsynced_screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path))


def video_counts(base_url: str) -> dict[str, int]:
    status, health = get_json(f"{base_url}/healthz")
    assert status == 200, health
    return dict(health["video"])


def frames_keys(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=f"{prefix}:frames:*"))
    finally:
        client.close()


def test_the_listener_sees_the_speakers_mouth_move_with_the_translation(
    service: str, tmp_path: Path, redis_url: str, stream_prefix: str
) -> None:
    score, frames, from_feed = meeting(service, tmp_path, face=True, screenshot=tmp_path / "listener.png")
    counts = video_counts(service)
    print(
        f"\nconsent: corr={score.corr:.3f} lag_frames={score.lag_frames} frames={frames} from_feed={from_feed} {counts}"
    )
    assert counts["stored"] >= 1 and counts["clips"] >= 1, counts
    assert counts["lipsynced_frames"] > counts["original_frames"], counts
    assert score.corr >= PASS_CORRELATION and abs(score.lag_frames) <= PASS_LAG_FRAMES, score


def test_without_consent_the_listener_sees_the_original_frames(
    service: str, tmp_path: Path, redis_url: str, stream_prefix: str
) -> None:
    score, frames, from_feed = meeting(service, tmp_path, face=False)
    counts = video_counts(service)
    print(f"\nno consent: corr={score.corr:.3f} lag={score.lag_frames} frames={frames} from_feed={from_feed} {counts}")
    assert counts["stored"] == 0 and counts["lipsynced_frames"] == 0 and from_feed == 0, counts
    assert frames_keys(redis_url, stream_prefix) == [], "no frame of the speaker's left the gateway"
