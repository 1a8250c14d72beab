"""`babelroom bench join --out DIR`: what a person who greets the room as soon as they join gets (issue 27).

A Spanish speaker opens the room page in headless Chromium and starts talking LEAD_IN_S after their microphone
opens, while an English and a Catalan listener are already in the room: the real gateway, Janus and workers,
on a private Redis, inside a network namespace of its own (benchmarks/media.py's `media_plane`). Each run is a
fresh room and fresh browsers. Per run, from the pages' own clocks (one machine, so they agree):

- `page_to_live_s`: from the speaker's page load (navigation start) to the page learning, over the events socket,
  that the gateway receives its audio;
- `mic_to_audio_s`: from `getUserMedia` resolving to the gateway's first audio frame of this participant (the
  `heard_at` the gateway sends with its "live" event);
- `final_after_end_s`: from the end of the first sentence (as the speaker's page heard it) to each listener's first
  final caption. The sentence repeats (Chromium loops the fake microphone) only after REPEAT_S, so a final that
  misses the first sentence shows as a figure over REPEAT_S, and a caption of the first one comes well before.

Writes join.json (per run, p50 and p95) and join.png.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from babelroom import netns
from benchmarks.asr_context import espeak
from benchmarks.media import CHROMIUM, CHROMIUM_FLAGS, media_plane
from pipeline.audio import resample, write_wav
from pipeline.routes import SPEECH_KINDS

RUNS = 10
LEAD_IN_S = 1.0  # people greet the room as the page opens: the speech starts this long after the microphone does
# One breath, no pause inside (a comma's pause would close a segment early, and the page's meter would end the
# speech there): the figure is the final caption of the sentence as a whole.
GREETING = "hola a todos me oís bien la casa es grande"
SPEAKER = ("Sofia", "es")
LISTENERS = (("Ed", "en"), ("Carme", "ca"))
REPEAT_S = 12.0  # the fake microphone's file: lead-in, the greeting, silence; Chromium plays it in a loop
MIC_RATE = 48_000
TARGET_FINAL_S = 2.5  # issue 27: every first sentence's final caption within this of the end of speech
JOIN_TIMEOUT_MS = 30_000
CAPTION_TIMEOUT_MS = 40_000
BETWEEN_RUNS_S = 2.0
ROOM_QUERY = "raw_audio=1"  # fake microphones are files: no voice processing (see tests/browser.py)


@dataclass
class JoinRun:
    run: int
    page_to_live_s: float | None = None
    mic_to_audio_s: float | None = None
    final_after_end_s: dict[str, float | None] = field(default_factory=dict)
    final_text: dict[str, str] = field(default_factory=dict)


def greeting_wav(path: Path, text: str | None, lead_in_s: float = LEAD_IN_S) -> Path:
    """48 kHz mono: `lead_in_s` of silence, the sentence, silence up to REPEAT_S (only silence for None)."""
    speech = espeak(text, "es") if text else np.zeros(0, dtype=np.float32)
    rate = 16_000
    tail = max(1.0, REPEAT_S - lead_in_s - speech.size / rate)
    samples = np.concatenate(
        [np.zeros(round(lead_in_s * rate), np.float32), speech, np.zeros(round(tail * rate), np.float32)]
    )
    write_wav(path, resample(samples, rate, MIC_RATE), MIC_RATE)
    return path


def room_url(base_url: str, room: str, name: str, language: str) -> str:
    return f"{base_url}/room/{room}?name={name}&speak={language}&hear={language}&{ROOM_QUERY}"


def greet(playwright: Any, base_url: str, run: int, speech_wav: Path, quiet_wav: Path) -> JoinRun:
    """One greeting in a fresh room: the listeners join first, then the speaker, who talks at once."""
    room = f"join{run}x{int(time.time() * 1000) % 10**7}"
    browsers = []
    result = JoinRun(run)

    def launch(wav: Path) -> Any:
        args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        browsers.append(browser)
        page = browser.new_page()
        page.set_default_timeout(JOIN_TIMEOUT_MS)
        return page

    try:
        listeners = []
        for name, language in LISTENERS:
            page = launch(quiet_wav)
            page.goto(room_url(base_url, room, name, language))
            page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")
            listeners.append((page, language))
        speaker = launch(speech_wav)
        speaker.goto(room_url(base_url, room, *SPEAKER))
        speaker.wait_for_function("window.babelroom && window.babelroom.metrics.speechEnds.length > 0")
        speech_end = speaker.evaluate("window.babelroom.metrics.speechEnds[0]")
        times = speaker.evaluate(
            "({load: performance.timeOrigin, mic: window.babelroom.metrics.micOpenedAt,"
            " live: window.babelroom.metrics.liveAt, heard: window.babelroom.metrics.heardAt})"
        )
        if times["live"]:  # pages before issue 27 had no "live" event: their runs measure the captions only
            result.page_to_live_s = round((times["live"] - times["load"]) / 1000, 3)
            result.mic_to_audio_s = round((times["heard"] - times["mic"]) / 1000, 3)
        for page, language in listeners:
            result.final_after_end_s[language], result.final_text[language] = first_final(page, language, speech_end)
    finally:
        for browser in browsers:
            browser.close()
    return result


def first_final(page: Any, language: str, speech_end_ms: float) -> tuple[float | None, str]:
    """The last final caption shown for the first sentence (before its repetition could be captioned), as seconds
    after the end of its speech, and its text. When none came in time, the first final shown at all (the
    repetition's, late by about REPEAT_S), or None when there was none."""
    shown = f"Object.keys(window.babelroom.metrics.captionsShownAt).some(k => k.endsWith('|{language}'))"
    try:
        page.wait_for_function(shown, timeout=CAPTION_TIMEOUT_MS)
    except Exception:  # Playwright's TimeoutError: no final caption at all within the timeout
        return None, ""
    in_time = speech_end_ms + (REPEAT_S - LEAD_IN_S) * 1000  # the repetition's speech ends after this
    page.wait_for_timeout(max(0.0, in_time - page.evaluate("Date.now()")))
    shown_at = page.evaluate("window.babelroom.metrics.captionsShownAt")
    times = sorted(at for key, at in shown_at.items() if key.endswith(f"|{language}"))
    chosen = max((at for at in times if at < in_time), default=times[0])
    texts = page.eval_on_selector_all(
        f'[data-caption][data-lang="{language}"][data-final="true"] .text', "els => els.map(e => e.textContent)"
    )
    return round((chosen - speech_end_ms) / 1000, 3), " | ".join(texts)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "max": round(max(values), 3)}


def summarize(runs: Sequence[JoinRun]) -> dict[str, Any]:
    finals = [v for r in runs for v in r.final_after_end_s.values() if v is not None]
    missed = sum(1 for r in runs for v in r.final_after_end_s.values() if v is None)
    return {
        "page_to_live_s": percentiles([r.page_to_live_s for r in runs if r.page_to_live_s is not None]),
        "mic_to_audio_s": percentiles([r.mic_to_audio_s for r in runs if r.mic_to_audio_s is not None]),
        "final_after_end_s": percentiles(finals),
        "finals_within_target": sum(1 for v in finals if v <= TARGET_FINAL_S),
        "finals_expected": len(runs) * len(LISTENERS),
        "finals_missed": missed,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = np.arange(len(runs))
    for offset, (_, language) in zip((-0.2, 0.2), LISTENERS, strict=True):
        values = [r["final_after_end_s"].get(language) or np.nan for r in runs]
        left.bar(xs + offset, values, width=0.4, label=f"{language} listener")
    left.axhline(TARGET_FINAL_S, color="red", linestyle="--", label=f"target {TARGET_FINAL_S} s")
    left.set(xlabel="run", ylabel="s after the end of speech", title="First sentence's final caption")
    left.legend()
    right.plot(xs, [r["page_to_live_s"] for r in runs], "o-", label="page load -> live")
    right.plot(xs, [r["mic_to_audio_s"] for r in runs], "s-", label="getUserMedia -> first audio at the gateway")
    right.set(xlabel="run", ylabel="s", title="Joining")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(out_dir: Path, runs: int = RUNS) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from benchmarks.latency import models_in_use, wait_for_workers
    from benchmarks.provenance import provenance, save

    if not netns.inside():
        netns.enter()
    workdir = out_dir / "join-run"
    workdir.mkdir(parents=True, exist_ok=True)
    speech_wav = greeting_wav(workdir / "greeting.wav", GREETING)
    quiet_wav = greeting_wav(workdir / "quiet.wav", None)
    results: list[JoinRun] = []
    with media_plane(workdir, SPEECH_KINDS) as (base_url, _, _, _), sync_playwright() as playwright:
        wait_for_workers(base_url, SPEECH_KINDS)
        for n in range(runs):
            results.append(greet(playwright, base_url, n, speech_wav, quiet_wav))
            print(json.dumps(asdict(results[-1]), ensure_ascii=False), flush=True)
            time.sleep(BETWEEN_RUNS_S)
    result = {
        "benchmark": "join",
        **provenance(models_in_use(os.environ)),
        "scenario": f"{SPEAKER[1]} speaker talks {LEAD_IN_S} s after the microphone opens; "
        f"{', '.join(language for _, language in LISTENERS)} listeners already in the room; headless Chromium",
        "target_final_after_end_s": TARGET_FINAL_S,
        **summarize(results),
        "runs": [asdict(r) for r in results],
    }
    save(result, out_dir, "join", plot)
    return result
