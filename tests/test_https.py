"""Joining from another machine: HTTPS with the self-signed certificate `babelroom up --https` makes, the page's
explanations (plain http from another address; every way the browser refuses the microphone), and TURN
through a real coturn with the gateway's short-lived credentials.

Everything runs in the suite's network namespace. The browsers open the veth address 198.18.0.1, not
127.0.0.1: only there is a plain-http page not a secure context, as on a real LAN. The one extra Chromium
flag accepts the test certificate by its public key; nothing declares an insecure origin secure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from babelroom import coturn, janus, netns
from babelroom.certificate import ensure_certificate, host_addresses, host_names, spki_sha256_base64
from babelroom.supervisor import free_port
from gateway.web.turn import turn_credential
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, fake_mic_wav, gateway_command, processes, service_env, wait_ready
from tests.browser import worker_commands as all_workers
from tests.test_browser_e2e import Listener, MeetingOptions, run_meeting

TIMEOUT_MS = 20_000
RELAY_PORTS = (50_000, 50_199)
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class SecureService:
    http_url: str  # plain http on the veth address: what a participant on another machine may type
    https_url: str
    spki: str  # base64 SHA-256 of the certificate's public key, for Chromium
    turn_url: str
    turn_secret: str
    turn_log: Path
    cert_dir: Path


@pytest.fixture(scope="module")
def secure_service(redis_url: str, janus_config: janus.JanusConfig, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[SecureService]:  # fmt: skip
    """coturn on the veth address, and the gateway (HTTP and HTTPS on every address) with real workers, for
    the whole module: one model load for all its tests."""
    folder = tmp_path_factory.mktemp("secure")
    # what `babelroom up --https` does: this host's names and addresses, here the namespace's veth address
    assert any(str(a) == netns.TEST_ADDRESS for a in host_addresses()), host_addresses()
    cert = ensure_certificate(folder / "tls", host_names(), host_addresses())
    turn = coturn.CoturnConfig(
        listen_ip=netns.TEST_ADDRESS, port=free_port(), relay_ip=netns.TEST_ADDRESS,
        allowed_peers=(netns.TEST_ADDRESS,), relay_ports=RELAY_PORTS,
    )  # fmt: skip
    turn_url = turn.urls(netns.TEST_ADDRESS)[0]
    http_port, https_port = free_port(), free_port()
    env = service_env(redis_url, f"https{os.getpid()}", janus.gateway_env(janus_config))
    env.update({
        "BABELROOM_TLS_CERT": str(cert.cert), "BABELROOM_TLS_KEY": str(cert.key),
        "BABELROOM_HTTPS_PORT": str(https_port),
        "BABELROOM_TURN_URLS": turn_url, "BABELROOM_TURN_SECRET": turn.secret,
    })  # fmt: skip
    turn_log = folder / "coturn.log"
    with open(turn_log, "wb") as log:
        server = subprocess.Popen(coturn.coturn_argv(coturn.write_config(folder, turn)), stdout=log, stderr=log)
        try:
            commands = [gateway_command(http_port, host="0.0.0.0"), *all_workers()]
            with processes(commands, env, folder) as procs:
                wait_ready(f"http://127.0.0.1:{http_port}", procs)
                yield SecureService(
                    f"http://{netns.TEST_ADDRESS}:{http_port}", f"https://{netns.TEST_ADDRESS}:{https_port}",
                    spki_sha256_base64(cert.cert), turn_url, turn.secret, turn_log, cert.cert.parent,
                )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=10)


def accept_certificate(service: SecureService) -> list[str]:
    """The one flag that lets Chromium accept the self-signed certificate: pinned by its public key."""
    return [f"--ignore-certificate-errors-spki-list={service.spki}"]


@pytest.fixture
def browser(secure_service: SecureService, tmp_path: Path) -> Iterator[Browser]:
    quiet = fake_mic_wav(tmp_path / "quiet.wav", None)
    with sync_playwright() as playwright:
        args = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={quiet}", *accept_certificate(secure_service)]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


# -- 1. a browser on another address joins over HTTPS ---------------------------------------------------------
def test_a_browser_on_the_veth_address_joins_over_https_and_hears_the_translation(
    secure_service: SecureService, tmp_path: Path
) -> None:
    def secure(page: Page) -> None:
        assert page.url.startswith(f"https://{netns.TEST_ADDRESS}:")
        assert page.evaluate("window.isSecureContext") is True

    options = MeetingOptions(browser_args=accept_certificate(secure_service), check_listener=secure)
    run_meeting(secure_service.https_url, tmp_path, [Listener("Bea", "es")], options)


# -- 2. the same link over plain http explains, and links to https --------------------------------------------
def test_the_http_link_from_another_address_explains_and_links_to_https(
    secure_service: SecureService, browser: Browser, tmp_path: Path
) -> None:
    query = "?name=Ana&speak=en&hear=es"
    page = browser.new_page(viewport={"width": 900, "height": 760})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{secure_service.http_url}/room/demo{query}")
    page.wait_for_selector("#insecure:not([hidden])")
    assert page.evaluate("window.isSecureContext") is False
    text = page.inner_text("#insecure")
    assert "only lets a page use the microphone and camera over a secure (https) connection" in text
    assert f"opened over plain http from another computer ({secure_service.http_url})" in text
    link = page.get_attribute("#insecure-link", "href")
    assert link == f"{secure_service.https_url}/room/demo{query}", link
    assert page.is_visible("#lobby") and not page.is_visible("#meeting"), "it never tried to join"
    shot = tmp_path / "insecure-page.png"
    page.screenshot(path=str(shot))
    if os.environ.get("BABELROOM_UPDATE_DOCS"):  # the picture in docs/ is made by this test
        shutil.copy(shot, DOCS / "insecure-page.png")
    page.click("#insecure-link")  # and the link works: the secure page joins
    page.wait_for_function("window.babelroom && window.babelroom.state.connected === true")
    assert page.evaluate("window.isSecureContext") is True


# -- 3. through the relay alone ---------------------------------------------------------------------------------
# Each peer connection of the page may use relayed candidates only (a participant behind a firewall that
# lets nothing but the TURN server through); the page's own code runs unchanged.
RELAY_ONLY = """
(() => {
  const Native = window.RTCPeerConnection;
  window.peerConnections = [];
  function RelayOnly(config, ...rest) {
    const pc = new Native({ ...(config || {}), iceTransportPolicy: "relay" }, ...rest);
    window.peerConnections.push(pc);
    return pc;
  }
  RelayOnly.prototype = Native.prototype;
  Object.setPrototypeOf(RelayOnly, Native);
  window.RTCPeerConnection = RelayOnly;
})();
"""

SELECTED_CANDIDATES = """
async () => {
  const found = [];
  for (const pc of window.peerConnections) {
    if (pc.connectionState !== "connected") continue;
    const stats = await pc.getStats();
    stats.forEach((report) => {
      if (report.type !== "transport" || !report.selectedCandidatePairId) return;
      const pair = stats.get(report.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
      found.push({ local: local.candidateType, relay: `${local.address}:${local.port}`, remote: remote.address });
    });
  }
  return found;
}
"""


def test_a_relay_only_participant_reaches_janus_through_coturn_and_hears_the_translation(
    secure_service: SecureService, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def through_the_relay(page: Page) -> None:
        pairs = page.evaluate(SELECTED_CANDIDATES)
        assert pairs and all(p["local"] == "relay" for p in pairs), pairs
        seen["pairs"] = pairs
        seen["username"] = page.evaluate("window.babelroom.state.me.ice_servers.at(-1).username")

    options = MeetingOptions(accept_certificate(secure_service), RELAY_ONLY, through_the_relay)
    run_meeting(secure_service.https_url, tmp_path, [Listener("Bea", "es")], options)
    print(f"relayed peer connections of the listener: {seen['pairs']}")
    log = secure_service.turn_log.read_text(errors="replace")
    allocations = [line for line in log.splitlines() if seen["username"] in line and "ALLOCATE" in line]
    assert any("success" in line for line in allocations), log[-3000:]
    print(f"coturn: {allocations[0].strip()}")


TURN_PROBE = """
async ({ url, username, credential }) => {
  const pc = new RTCPeerConnection({ iceServers: [{ urls: url, username, credential }], iceTransportPolicy: "relay" });
  const relayed = [], errors = [];
  pc.onicecandidate = (e) => { if (e.candidate && e.candidate.candidate) relayed.push(e.candidate.candidate); };
  pc.onicecandidateerror = (e) => errors.push(e.errorCode);
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    const timer = setTimeout(done, 10000);
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") { clearTimeout(timer); done(); } };
  });
  pc.close();
  return { relayed, errors };
}
"""


def test_coturn_relays_for_a_fresh_credential_and_refuses_expired_or_forged_ones(
    secure_service: SecureService, browser: Browser
) -> None:
    page = browser.new_page()
    now = time.time()
    fresh = turn_credential(secure_service.turn_secret, "probe", now + 600)
    expired = turn_credential(secure_service.turn_secret, "probe", now - 60)
    forged = turn_credential("not-the-secret", "probe", now + 600)

    def probe(username: str, credential: str) -> dict[str, list[Any]]:
        args = {"url": secure_service.turn_url, "username": username, "credential": credential}
        result: dict[str, list[Any]] = page.evaluate(TURN_PROBE, args)
        return result

    assert probe(fresh.username, fresh.password)["relayed"], "a fresh credential gets a relayed address"
    for what, credential in (("expired", expired), ("forged", forged)):
        result = probe(credential.username, credential.password)
        assert result["relayed"] == [], f"an {what} credential was given a relay"
        assert 401 in result["errors"], f"{what}: {result}"


# -- 4. every refusal of the microphone or camera, in plain words -----------------------------------------------
def refuse_with(name: str) -> str:
    """The browser's refusal `name`, made by the page's getUserMedia (a stand-in: headless Chromium has no
    second program to hold the device)."""
    return f"""navigator.mediaDevices.getUserMedia = async () => {{
        throw new DOMException("Could not start audio source (browser detail)", "{name}");
    }};"""


REFUSALS = {
    "NotAllowedError": "was told not to let this page use your microphone",
    "NotFoundError": "No microphone was found",
    "NotReadableError": "in use by another program",
    "SomethingNewError": "could not start your microphone",
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_each_microphone_refusal_has_its_own_plain_message(
    secure_service: SecureService, browser: Browser, refusal: str
) -> None:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(refuse_with(refusal))
    page.goto(f"{secure_service.https_url}/room/refusals?name=Ana&speak=en&hear=es")
    page.wait_for_selector("#join-error:not([hidden])")
    message = page.inner_text("#join-error")
    assert REFUSALS[refusal] in message and "press Join again" in message, message
    assert "browser detail" not in message and "Error" not in message, "no JavaScript error text reaches the user"


def test_a_real_browser_without_permission_or_devices_is_explained(
    secure_service: SecureService, tmp_path: Path
) -> None:
    """The same two refusals from Chromium itself: no fake devices at all, then devices the user refuses."""
    url = f"{secure_service.https_url}/room/refusals?name=Ana&speak=en&hear=es"
    cases = {
        "no device": ([f for f in CHROMIUM_FLAGS if "fake-device" not in f], "No microphone was found"),
        "denied": ([f for f in CHROMIUM_FLAGS if "fake-ui" not in f], "was told not to let this page use"),
    }
    with sync_playwright() as playwright:
        for case, (flags, expected) in cases.items():
            args = [*flags, *accept_certificate(secure_service)]
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                page.wait_for_selector("#join-error:not([hidden])")
                message = page.inner_text("#join-error")
                assert expected in message, f"{case}: {message}"
            finally:
                browser.close()


# -- the compose proxy: Caddy with the operator's own certificate, WebSockets through it ------------------------------
def test_caddy_serves_the_gateway_over_https_with_an_own_certificate_and_passes_websockets(
    secure_service: SecureService, tmp_path: Path
) -> None:
    """deploy/Caddyfile as compose runs it, with Debian's caddy: the join API, the events socket and the Janus
    proxy socket all work through it (media never goes through Caddy: it goes to Janus)."""
    port = free_port()
    cert, key = (secure_service.cert_dir / name for name in ("cert.pem", "key.pem"))
    env = {
        "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "BABELROOM_DOMAIN": f"{netns.TEST_ADDRESS}:{port}", "BABELROOM_CADDY_TLS": f"tls {cert} {key}",
        "BABELROOM_GATEWAY": secure_service.http_url.removeprefix("http://"), "PATH": os.environ["PATH"],
    }  # fmt: skip
    command = ["caddy", "run", "--config", str(DOCS.parent / "deploy" / "Caddyfile"), "--adapter", "caddyfile"]
    with open(tmp_path / "caddy.log", "wb") as log:
        caddy = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            reply = asyncio.run(join_through(f"https://{netns.TEST_ADDRESS}:{port}", cert))
        finally:
            caddy.terminate()
            caddy.wait(timeout=10)
    roster = reply["event"]
    assert roster["type"] == "roster" and [p["name"] for p in roster["participants"]] == ["Ana"], reply
    assert reply["janus"]["janus"] == "success", reply


async def join_through(base_url: str, cert: Path) -> dict[str, Any]:
    """Join at `base_url` trusting only `cert`, then open both sockets: the first event, Janus's answer to create."""
    context = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(ssl=context)) as http:
        while True:  # until Caddy listens
            try:
                async with http.get("/healthz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
        body = {"name": "Ana", "speak": "en", "hear": "es"}
        async with http.post("/api/rooms/caddy/join", json=body) as response:
            me = await response.json()
        ticket = f"?ticket={me['ticket']}"
        async with http.ws_connect(me["events"] + ticket) as events:
            event = await events.receive_json(timeout=10)
        async with http.ws_connect(me["janus"] + ticket, protocols=("janus-protocol",)) as janus_socket:
            await janus_socket.send_json({"janus": "create", "transaction": "t1"})
            created = await janus_socket.receive_json(timeout=10)
        await http.post(f"/api/sessions/{me['id']}/leave{ticket}")
    return {"event": event, "janus": created}
