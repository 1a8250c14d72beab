"""Headless Firefox ESR driven over WebDriver BiDi, its built-in remote protocol (no geckodriver, no new dependency).

`launch_firefox` starts Firefox on a fresh profile whose prefs give it a fake camera and microphone (a tone),
allow autoplay, keep it off the network and keep WebRTC ICE on loopback with plain 127.0.0.1 host candidates
(not mDNS names, which aiortc cannot resolve). `Tab.evaluate` runs an expression in the page and returns its
value through JSON; `Tab.wait_for` polls an expression until it is truthy. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = "/usr/bin/firefox-esr"
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")

FIREFOX_PREFS: dict[str, bool | int | str] = {
    # media: a fake camera and microphone without a permission prompt; sound and video play unasked
    "media.navigator.permission.disabled": True,
    "media.navigator.streams.fake": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # WebRTC on loopback: host candidates are 127.0.0.1, not obfuscated mDNS names
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.no_host": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # nothing phones home: updates, telemetry, remote settings, safe browsing, captive portal
    "app.update.enabled": False,
    "app.update.auto": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "app.normandy.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
}


class BiDiError(RuntimeError):
    """A WebDriver BiDi command answered with an error, or an evaluated script threw."""


def write_profile(directory: Path, prefs: Mapping[str, bool | int | str] = FIREFOX_PREFS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(key)}, {json.dumps(value)});" for key, value in prefs.items()]
    (directory / "user.js").write_text("\n".join(lines) + "\n")
    return directory


class BiDi:
    """One WebDriver BiDi session over a websocket: commands by id, events kept for `events`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                future = self._pending.pop(data["id"], None) if isinstance(data.get("id"), int) else None
                if future is not None and not future.done():
                    future.set_result(data)
                elif data.get("type") == "event":
                    self.events.append(data)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BiDiError("the BiDi connection closed"))

    async def command(self, method: str, params: Mapping[str, Any], timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            await self._ws.send_str(json.dumps({"id": command_id, "method": method, "params": dict(params)}))
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(command_id, None)
        if reply.get("type") == "error":
            raise BiDiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        return reply["result"]

    def console(self) -> list[str]:
        """The page's console messages and uncaught errors so far (after `log.entryAdded` is subscribed)."""
        entries = [e["params"] for e in self.events if e.get("method") == "log.entryAdded"]
        return [f"{e.get('level')}: {e.get('text')}" for e in entries]

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


class Tab:
    """A top-level browsing context of the session."""

    def __init__(self, bidi: BiDi, context: str) -> None:
        self.bidi = bidi
        self.context = context

    async def navigate(self, url: str, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        await self.bidi.command(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}, timeout_s
        )

    async def evaluate(self, expression: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        """The value of a JavaScript expression (awaited if a promise), carried back as JSON."""
        source = f"(async () => JSON.stringify(await ({expression})) ?? null)()"
        params = {
            "expression": source,
            "target": {"context": self.context},
            "awaitPromise": True,
            "resultOwnership": "none",
        }
        result = await self.bidi.command("script.evaluate", params, timeout_s)
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BiDiError(f"{expression!r} threw: {details.get('text')}")
        value = result["result"]
        return None if value.get("type") != "string" else json.loads(value["value"])

    async def wait_for(self, expression: str, timeout_s: float, what: str = "") -> Any:
        """Polls until the expression is truthy; returns its value. A failed evaluation counts as not yet."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            try:
                last = await self.evaluate(expression, timeout_s=max(1.0, deadline - time.monotonic()))
                if last:
                    return last
            except (BiDiError, TimeoutError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"Firefox: {what or expression} not true within {timeout_s} s (last: {last!r})")
            await asyncio.sleep(POLL_INTERVAL_S)


class Firefox:
    def __init__(self, proc: subprocess.Popen[bytes], bidi: BiDi, log: Path) -> None:
        self.proc = proc
        self.bidi = bidi
        self.log = log

    async def tab(self) -> Tab:
        """The first top-level browsing context, or a new one if none is open."""
        tree = await self.bidi.command("browsingContext.getTree", {"maxDepth": 0})
        contexts = tree.get("contexts") or []
        if contexts:
            return Tab(self.bidi, contexts[0]["context"])
        created = await self.bidi.command("browsingContext.create", {"type": "tab"})
        return Tab(self.bidi, created["context"])


async def _listening_url(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"Firefox did not open WebDriver BiDi within {timeout_s} s (exit {proc.poll()}): {tail}")


@contextlib.asynccontextmanager
async def launch_firefox(
    workdir: Path, prefs: Mapping[str, bool | int | str] = FIREFOX_PREFS, executable: str = FIREFOX
) -> AsyncIterator[Firefox]:
    """Headless Firefox on a fresh profile under workdir, with a BiDi session; killed and cleaned up on exit."""
    if shutil.which(executable) is None:
        raise AssertionError(f"{executable} is not installed: apt-get install firefox-esr")
    profile = write_profile(workdir / "firefox-profile", prefs)
    log = workdir / "firefox.log"
    argv = [executable, "--headless", "--no-remote", "--profile", str(profile), "--remote-debugging-port", "0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "about:blank"], stdout=out, stderr=subprocess.STDOUT)
    http: aiohttp.ClientSession | None = None
    bidi: BiDi | None = None
    try:
        url = await _listening_url(proc, log, START_TIMEOUT_S)
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"{url}/session", timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=0)
        bidi = BiDi(ws)
        await bidi.command("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
        await bidi.command("session.subscribe", {"events": ["log.entryAdded"]})
        yield Firefox(proc, bidi, log)
    finally:
        if bidi is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bidi.command("session.end", {}), 5)
            with contextlib.suppress(Exception):
                await bidi.close()
        if http is not None:
            await http.close()
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        shutil.rmtree(profile, ignore_errors=True)
