"""Lip-sync end to end in real browsers: the speaker's Chromium has a fake camera playing a talking head
made from a real face photo (benchmarks/talking_head.py) and a fake mic saying an English sentence; a
Spanish listener asked for lip-synced video. The gateway, the real workers (lipsync included) and Janus
run as in production.

What the listener sees is measured in its own page: each frame of the speaker's tile as it is presented
(requestVideoFrameCallback), drawn to a canvas; the speech's start in the page from its meter, matched
against the synthesized speech's own level. Mouth opening (FaceMesh) per frame gives the figures of
workers/lipsync_metric.py: the clip as the lipsync worker sent it against the speech (asserted synced),
the listener's frames against the clip and against the speech (printed; loosely bounded: the page's
timing on a loaded 2-core machine is noisy), and how far the mouth moves. With the speaker's consent
the listener's view of her mouth moves and follows the clip; without it no frame leaves the gateway
(its counters, and no frames key in Redis) and the tile shows the speaker's camera as it is, mouth still.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from playwright.sync_api import Browser, Playwright, sync_playwright

from benchmarks.talking_head import talking_head_frames
from pipeline.bus import FIELD
from pipeline.frames import Frame, decode_frames, from_jpeg
from pipeline.messages import Message, SynthesizedSpeech, VideoClip, decode
from pipeline.routes import RESULTS
from pipeline.video import write_y4m
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, RAW_AUDIO, fake_mic_wav, get_json
from tests.test_browser_e2e import SENTENCE, enter, wait_for_translation
from workers.lipsync_metric import (
    loudness_per_frame,
    mouth_openings,
    sync_score,
)

pytestmark = pytest.mark.slow

FPS = 15  # the feed's rate (gateway/media/video.py FEED_FPS), and the grid the figures are computed on
CAMERA_S = 8.0  # Chromium loops the file
# In the listener's page: each frame of the speaker's tile as it is presented (requestVideoFrameCallback,
# on the page's clock), and the translated speech's level every 20 ms, from when the capture starts.
CAPTURE_JS = """() => {
  const cap = window.lipsyncCapture = { frames: [], levels: [], speaker: "" };
  const clock = () => performance.timeOrigin + performance.now();
  const canvas = document.createElement("canvas");
  canvas.width = 320; canvas.height = 240;
  const context = canvas.getContext("2d");
  setInterval(() => cap.levels.push([clock(), window.babelroom.metrics.translatedRms]), 20);
  let watched = null;
  const onFrame = (now, meta) => {
    if (cap.frames.length < 600) {
      context.drawImage(watched, 0, 0, canvas.width, canvas.height);
      const fromFeed = watched.parentElement.hasAttribute("data-translated-video");
      const shownAt = performance.timeOrigin + meta.expectedDisplayTime;
      cap.frames.push([shownAt, canvas.toDataURL("image/jpeg", 0.9), fromFeed]);
    }
    watched.requestVideoFrameCallback(onFrame);
  };
  setInterval(() => {
    const video = document.querySelector(`[data-participant="${cap.speaker}"] video`);
    if (cap.speaker && video && video !== watched) { watched = video; video.requestVideoFrameCallback(onFrame); }
  }, 50);
}"""
# The lipsync stage runs after TTS (0.7 s for this sentence on an idle 2-core machine): a playout delay
# past that lets the lip-synced frames play from the speech's first word (with the default 0.3 s they
# take over a moment into it, which the frame counters show).
LIPSYNC_PLAYOUT_DELAY_S = 2.0
SPEECH_RMS = 0.01
# Mouth opening (10th to 90th percentile over the speech) in the listener's page: 0.10-0.13 lip-synced,
# 0.013-0.019 for the speaker's own camera (the photo's mouth never moves; FaceMesh jitters a little).
MOUTH_MOVES = 0.05
METER_S = 1024 / 48_000  # the page meter's analyser window (room.js: fftSize 1024 at 48 kHz)
# The listener's frames against the clip's: the same mouth movements, as a 15 fps WebRTC video shows them
# and FaceMesh reads them off a 320x240 tile, near their place in the speech. Measured in a page that
# shares 2 loaded cores with three other browsers and the workers, this was 0.39-0.92 at lags -4..+4
# frames over eleven runs, so only a loose bound is asserted; the figures are printed.
SHOWN_CORRELATION = 0.3
SHOWN_LAG_FRAMES = 4  # the page's threshold for translated sound (room.js SPEECH_RMS)
MARGIN_S = 0.5  # frames kept either side of the translated speech
START_SEARCH_MS = 250.0  # the speech's start is sought this far either side of its first loud reading


@pytest.fixture
def lipsync_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's environment (requested before `service`): a playout delay that covers lip-sync."""
    monkeypatch.setenv("BABELROOM_PLAYOUT_DELAY_S", str(LIPSYNC_PLAYOUT_DELAY_S))


def camera_y4m(path: Path) -> Path:
    write_y4m(path, talking_head_frames(CAMERA_S, FPS), FPS)
    return path


def launch(playwright: Playwright, mic: Path, camera: Path | None = None) -> Browser:
    args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}"]
    if camera is not None:
        args.append(f"--use-file-for-fake-video-capture={camera}")
    browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    return browser


def on_speech_timeline(capture: dict[str, Any], speech: SynthesizedSpeech) -> tuple[list[Frame], np.ndarray, int]:
    """The frames the page presented at each 1/FPS of the translated speech, the speech's loudness at
    each, and how many of them came from the translation feed."""
    samples = samples_of(speech)
    start = speech_start_ms(np.asarray(capture["levels"], dtype=np.float64), samples, speech.sample_rate)
    count = int(samples.size / speech.sample_rate * FPS)
    ticks = start + np.arange(count) * 1000 / FPS
    shots = sorted(capture["frames"])
    times = np.array([at for at, _, _ in shots])
    assert times.size > FPS, f"only {times.size} frames of the speaker's tile were presented"
    picks = np.clip(np.searchsorted(times, ticks, side="right") - 1, 0, len(shots) - 1)
    decoded: dict[int, Frame] = {}
    frames = [decoded.setdefault(int(i), jpeg_frame(shots[int(i)][1])) for i in picks]
    loudness = loudness_per_frame(samples, speech.sample_rate, FPS, count)
    return frames, loudness, sum(1 for i in picks if shots[int(i)][2])


def speech_start_ms(levels: np.ndarray, samples: np.ndarray, rate: int) -> float:
    """When the speech's first sample played in the page (its clock, ms): the offset at which the page
    meter's readings best match the speech's own level, read the same way (RMS of the last METER_S)."""
    heard = levels[levels[:, 1] > SPEECH_RMS, 0]
    assert heard.size > 10, "no translated speech was heard"
    ends = np.arange(samples.size // (rate // 100)) * (rate // 100)  # every 10 ms of the speech
    window = int(METER_S * rate)
    expected = np.array([np.sqrt(np.mean(samples[max(0, e - window) : e + 1] ** 2)) for e in ends])
    # The page first reads it loud about when the speech itself first is: search near there, not a whole speech
    # length back, where sparse readings once matched best 1.4 s early (the lip-synced frames were on time).
    lead_ms = float(np.argmax(expected > SPEECH_RMS)) * 10
    around = heard.min() - lead_ms
    best, best_corr = around, -1.0
    for start in np.arange(around - START_SEARCH_MS, around + START_SEARCH_MS, 5.0):
        page = np.interp(start + ends * 1000 / rate, levels[:, 0], levels[:, 1])
        corr = float(np.corrcoef(page, expected)[0, 1]) if page.std() > 0 else -1.0
        if corr > best_corr:
            best, best_corr = start, corr
    return float(best)


def jpeg_frame(data_url: str) -> Frame:
    return from_jpeg(base64.b64decode(data_url.split(",", 1)[1]))


def meeting(base_url: str, tmp_path: Path, face: bool, screenshot: Path | None = None) -> dict[str, Any]:
    """Alice (English, the talking head) says the sentence to Bea (Spanish, lip-sync on); returns what
    Bea's page captured."""
    speech = fake_mic_wav(tmp_path / "speech.wav", SENTENCE)
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    camera = camera_y4m(tmp_path / "face.y4m")
    room = f"lip{int(time.time() * 1000) % 10**8}"
    with sync_playwright() as playwright:
        listener_browser = launch(playwright, quiet)
        speaker_browser = launch(playwright, speech, camera)
        try:
            listener_url = f"{base_url}/room/{room}?name=Bea&speak=es&hear=es&lipsync=1&{RAW_AUDIO}"
            listener = enter(listener_browser, listener_url)
            listener.evaluate(CAPTURE_JS)
            speaker_url = f"{base_url}/room/{room}?name=Alice&speak=en&hear=en&face={int(face)}&{RAW_AUDIO}"
            speaker = enter(speaker_browser, speaker_url)
            speaker_id = speaker.evaluate("window.babelroom.state.me.id")
            listener.evaluate("id => { window.lipsyncCapture.speaker = id; }", speaker_id)
            wait_for_translation(listener, "es")
            if screenshot is not None:
                listener.wait_for_selector("[data-translated-video]", timeout=10_000)
                time.sleep(0.6)  # into the sentence: the mouth is open
                listener.screenshot(path=str(screenshot))
            listener.wait_for_function(f"window.babelroom.metrics.translatedRms < {SPEECH_RMS / 2}", timeout=30_000)
            time.sleep(MARGIN_S)
            capture: dict[str, Any] = listener.evaluate("window.lipsyncCapture")
            (tmp_path / "capture.json").write_text(json.dumps(capture))  # to look at after a failure
        finally:
            listener_browser.close()
            speaker_browser.close()
    return capture


def results(redis_url: str, prefix: str) -> list[Message]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [decode(fields[FIELD]) for _, fields in client.xrange(f"{prefix}:{RESULTS}")]
    finally:
        client.close()


def spanish_speech(messages: list[Message]) -> SynthesizedSpeech:
    return next(m for m in messages if isinstance(m, SynthesizedSpeech) and m.language == "es" and m.pcm)


def samples_of(speech: SynthesizedSpeech) -> np.ndarray:
    return np.frombuffer(speech.pcm, dtype="<i2").astype(np.float32) / 32768


def opening_range(openings: np.ndarray) -> float:
    low, high = np.percentile(openings, [10, 90])
    return float(high - low)


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
    lipsync_delay: None, service: str, tmp_path: Path, redis_url: str, stream_prefix: str
) -> None:
    capture = meeting(service, tmp_path, face=True, screenshot=tmp_path / "listener.png")
    counts = video_counts(service)
    messages = results(redis_url, stream_prefix)
    speech = spanish_speech(messages)
    clip = next(m for m in messages if isinstance(m, VideoClip))
    clip_openings = mouth_openings(decode_frames(clip))
    loudness_of_clip = loudness_per_frame(samples_of(speech), speech.sample_rate, FPS, clip_openings.size)
    sent = sync_score(clip_openings, loudness_of_clip, FPS)
    frames, loudness, from_feed = on_speech_timeline(capture, speech)
    seen = mouth_openings(frames)
    common = min(seen.size, clip_openings.size)  # the clip may round its speech to one frame fewer
    shown = sync_score(seen[:common], clip_openings[:common], FPS)
    heard = sync_score(seen, loudness, FPS)
    print(f"\nthe clip against the speech (as the lipsync worker sent it): {sent.as_dict()}")
    print(f"the listener's page against the clip (mouth opening per frame): {shown.as_dict()}")
    print(f"the listener's page against the speech: {heard.as_dict()} over {len(frames)} frames")
    print(f"mouth opening in the listener's page, 10th to 90th percentile: {opening_range(seen):.3f}")
    print(f"frames from the feed: {from_feed}; gateway counters: {counts}")
    assert counts["stored"] == 1 and counts["clips"] == 1 and counts["lipsynced"] == 1, counts
    assert counts["lipsynced_frames"] > counts["original_frames"], counts
    assert from_feed >= len(frames) / 3, "the listener saw the speaker's feed while the translation played"
    assert sent.synced, f"the lip-synced mouth follows the speech: {sent}"
    assert opening_range(seen) > MOUTH_MOVES, "the mouth the listener sees moves"
    # the page shows those mouth movements, near their time in the speech
    assert shown.corr >= SHOWN_CORRELATION and abs(shown.lag_frames) <= SHOWN_LAG_FRAMES, shown


def test_without_consent_the_listener_sees_the_original_frames(
    service: str, tmp_path: Path, redis_url: str, stream_prefix: str
) -> None:
    capture = meeting(service, tmp_path, face=False)
    counts = video_counts(service)
    speech = spanish_speech(results(redis_url, stream_prefix))
    frames, loudness, from_feed = on_speech_timeline(capture, speech)
    openings = mouth_openings(frames)
    seen = sync_score(openings, loudness, FPS)
    print(f"\nno consent: corr={seen.corr:.3f} lag_frames={seen.lag_frames} over {len(frames)} frames")
    print(f"mouth opening in the listener's page, 10th to 90th percentile: {opening_range(openings):.3f}")
    print(f"frames from the feed: {from_feed}; gateway counters: {counts}")
    assert counts["stored"] == 0 and counts["lipsynced_frames"] == counts["original_frames"] == 0, counts
    assert from_feed == 0 and frames_keys(redis_url, stream_prefix) == [], "no frame of Alice's left the gateway"
    assert opening_range(openings) < MOUTH_MOVES, "the listener sees Alice's camera as it is: her mouth still"
