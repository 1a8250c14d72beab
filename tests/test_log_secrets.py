"""No secret reaches a log (issue 28, finding 3): the redaction filter every handler passes through
(pipeline/logs.py), line by line; then a real meeting under `babelroom up --turn` with tokens required, after
which its whole log (supervisor, gateway with its access log, workers, Janus, coturn) is searched for every
secret the meeting handed out or the service holds. Before, the access log kept each `?ticket=` and `?token=`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from babelroom import netns
from babelroom.supervisor import free_port
from benchmarks.participant import ScriptedParticipant
from gateway.web.tokens import issue_token
from pipeline import logs
from tests.speech import espeak, silence
from tests.test_gateway import SpeechTrack
from tests.test_up import ROOT, children_of

TOKEN = issue_token("a-token-secret", "standup", "Ana")
TICKET = "Zq3v9xV1c2b3n4m5k6j7h8g9f0d1s2a3"


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1 [..] "GET /api/sessions/ab12/events?ticket={TICKET} HTTP/1.1" 101 0 "-" "Python/3.11 aiohttp"',
        f'127.0.0.1 [..] "GET /static/room.js HTTP/1.1" 200 9 "http://h/room/standup?name=Ana&token={TOKEN}" "-"',
        f"join refused: {{'ticket': '{TICKET}', 'ice_servers': [{{'credential': 'c2VjcmV0LXBhc3N3b3Jk'}}]}}",
        f'{{"janus": "create", "apisecret": "{TICKET}", "transaction": "t1"}}',
        f"a token in a message: {TOKEN}.",
        "GET http://127.0.0.1:9/turn?service=turn&api=Zq3v9xV1c2b&key=Zq3v9xV1c2b&username=1",
        "connecting to redis://:Zq3v9xV1c2b3@redis:6379/0",
    ],
)
def test_secrets_in_a_line_are_redacted_and_the_rest_kept(line: str) -> None:
    cleaned = logs.Redact().clean(line)
    assert "[redacted]" in cleaned
    for secret in (TICKET, TOKEN, "c2VjcmV0LXBhc3N3b3Jk", "Zq3v9xV1c2b"):
        assert secret not in cleaned, cleaned
    assert cleaned.split(" ")[0] == line.split(" ")[0], "what is not secret stays"


def test_every_handler_passes_records_through_the_filter_messages_and_tracebacks_alike() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logs.configure("INFO", ["the-token-secret-value"])
        assert logs.REDACT in handler.filters
        logs.protect("fresh-janus-api-secret")
        log = logging.getLogger("test.secrets")
        log.setLevel(logging.INFO)
        log.info("token secret %s and janus %s", "the-token-secret-value", "fresh-janus-api-secret")
        try:
            raise ValueError(f"bad ticket={TICKET}")
        except ValueError:
            log.exception("failed")
        logs.protect("short")  # too short to search for: it would blank out words
        log.info("a short word")
        log.warning("refused a request: %s", "x" * 100_000)
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "the-token-secret-value" not in text and "fresh-janus-api-secret" not in text and TICKET not in text
    assert "ValueError: bad ticket=[redacted]" in text and "a short word" in text
    assert f"({100_000 + 19 - logs.MAX_MESSAGE_CHARS} characters cut)" in text and len(text) < 10_000


def test_redaction_takes_linear_time_on_lines_made_to_slow_it() -> None:
    n = 64 * 1024
    lines = [
        "a" * n,  # one long run of token characters without its dot
        "a." * (n // 2),
        ("x" * 20 + ".") * (n // 21),
        '"token": ' * (n // 9),
        '"token"' + " " * n,
        "ticket=" * (n // 7),
        "://a:" + "b" * n,
        "://" * (n // 3),
    ]
    for line in lines:
        started = time.perf_counter()
        logs.Redact(["a-secret-value"]).clean(line)
        assert time.perf_counter() - started < 0.5, line[:40]


# -- a real meeting --------------------------------------------------------------------------------------------
UP_READY_S = 240
SECRETS_ENV = {
    "BABELROOM_TOKEN_SECRET": "token-secret-of-the-meeting",
    "BABELROOM_TURN_SECRET": "turn-secret-of-the-meeting",
    "BABELROOM_MONITORING_ACCESS": "token",
    "BABELROOM_MONITORING_TOKEN": "monitoring-token-of-the-meeting",
    "BABELROOM_OPEN_ROOMS": "0",
    "BABELROOM_JANUS_ICE_INTERFACES": netns.TEST_INTERFACE,
}


@pytest.mark.slow
def test_a_whole_meeting_leaves_no_secret_in_the_log(media_namespace: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"TMPDIR": str(tmp_path)} | SECRETS_ENV
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "babelroom.cli", "up", "--port", str(port), "--turn"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        descendants: set[int] = set()
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_ready(base_url, up)
            descendants = children_of(up.pid)
            held = service_secrets(tmp_path)
            handed_out, caption = asyncio.run(meet(base_url))
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=90)
    text = log_path.read_text(errors="replace")
    secrets = {**held, **handed_out, **{k: v for k, v in SECRETS_ENV.items() if "SECRET" in k or "TOKEN" in k}}
    print(f"{len(secrets)} secrets searched for in {len(text.splitlines())} log lines; the caption: {caption!r}")
    assert "casa" in caption.lower(), "the meeting really took place"
    assert "ticket=[redacted]" in text and "token=[redacted]" in text, "the access log was there, and redacted"
    leaked = [name for name, value in secrets.items() if value and value in text]
    assert not leaked, f"in the log: {leaked}"
    assert len(descendants) >= 7


def wait_until_ready(base_url: str, up: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + UP_READY_S
    request = urllib.request.Request(
        f"{base_url}/healthz", headers={"Authorization": f"Bearer {SECRETS_ENV['BABELROOM_MONITORING_TOKEN']}"}
    )
    while time.monotonic() < deadline:
        assert up.poll() is None, "babelroom up exited"
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as reply:
            if b'"status": "ok"' in reply.read():
                return
        time.sleep(0.5)
    raise AssertionError("babelroom up was not ready in time")


def service_secrets(tmp_path: Path) -> dict[str, str]:
    """What `up` drew for itself: Janus's API secret, admin key and TURN API key (from its configuration)."""
    [folder] = tmp_path.glob("babelroom-janus-*")
    found: dict[str, str] = {}
    for name in ("api_secret", "admin_key", "turn_rest_api_key"):
        for config in folder.glob("*.jcfg"):
            if match := re.search(rf'\b{name} = "([^"]+)"', config.read_text()):
                found[f"janus {name}"] = match.group(1)
    assert {"janus api_secret", "janus admin_key", "janus turn_rest_api_key"} <= set(found), found
    return found


async def meet(base_url: str) -> tuple[dict[str, str], str]:
    """Bob says a sentence in English and Ana reads it in Spanish, both with tokens; the page's other requests
    (the room page and its files with the token in the Referer, the room's state) and a leave are made too.
    Returns the secrets handed out (tokens, tickets, TURN credentials) and Ana's caption."""
    secret = SECRETS_ENV["BABELROOM_TOKEN_SECRET"]
    tokens = {name: issue_token(secret, "standup", name) for name in ("Ana", "Bob")}
    ana = ScriptedParticipant(base_url, "standup", "Ana", "es", "es")
    bob = ScriptedParticipant(base_url, "standup", "Bob", "en", "en")
    try:
        await ana.join(SpeechTrack(silence(90)), token=tokens["Ana"])
        async with aiohttp.ClientSession(base_url=base_url) as http:
            page = f"{base_url}/room/standup?name=Ana&speak=es&hear=es&token={tokens['Ana']}"
            for path in (
                f"/room/standup?token={tokens['Ana']}",
                "/static/room.js",
                f"/api/rooms/standup?token={tokens['Ana']}",
            ):
                async with http.get(path, headers={"Referer": page}) as reply:
                    assert reply.status == 200, path
        speech = np.concatenate([silence(1.0), espeak("the house is big"), silence(60)])
        await bob.join(SpeechTrack(speech), token=tokens["Bob"])
        final = await ana.wait_for(lambda: ana.captions(final=True, lang="es"), "a Spanish caption", timeout_s=120)
        handed: dict[str, Any] = {f"token of {name}": token for name, token in tokens.items()}
        for person in (ana, bob):
            handed[f"ticket of {person.name}"] = person.session["ticket"]
            for server in person.session["ice_servers"]:
                handed[f"TURN password of {person.name}"] = server.get("credential", "")
        async with aiohttp.ClientSession(base_url=base_url) as http:
            leave = f"/api/sessions/{bob.session['id']}/leave?ticket={bob.session['ticket']}"
            async with http.post(leave) as reply:
                assert reply.status == 200
        return handed, str(final[0]["text"])
    finally:
        await bob.close()
        await ana.close()
