"""Janus, the SFU: the configuration we generate for it, and the command line that runs it.

Janus forwards every participant's camera and microphone to the others as RTP, never decoding them:
that is the media plane. The gateway only drives it. The configuration written here loads only what
BabelRoom uses (the VideoRoom plugin and the WebSockets transport, no event handlers, no loggers), binds
the API to one address (loopback for `babelroom up`), requires an API secret on every request, and
locks room creation and RTP forwarding behind an admin key. Both secrets are known to the gateway
only: browsers reach Janus through the gateway's filtering proxy (gateway/web/proxy.py). Given a TURN server,
Janus asks TurnApi, on loopback beside it, for a short-lived credential for each PeerConnection.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import json
import secrets
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.options import TURN_TTL_S, TurnOptions
from gateway.web.turn import turn_credential

JANUS_BINARY = "janus"
# Where distributions put Janus's modules: Debian's multiarch folder first, then a source build's.
MODULE_FOLDERS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus", "/opt/janus/lib/janus")
PLUGINS = ("libjanus_videoroom.so",)
TRANSPORTS = ("libjanus_websockets.so",)
# UDP ports Janus uses for media; open these (and the gateway's HTTP port) in a firewall.
RTP_PORT_RANGE = "20000-40000"
# A session whose keepalives stop (a browser tab closed without a goodbye) is dropped after this long.
SESSION_TIMEOUT_S = 60
# Janus asks for a TURN credential of its own each time it sets up a PeerConnection (the TURN REST API, served
# by TurnApi); each lasts as long as a browser's in an open room, so none outlives the meeting it was made for.
JANUS_TURN_TTL_S = TURN_TTL_S
# How long Janus waits for one: without an answer it gathers no relayed candidates for that PeerConnection.
TURN_API_TIMEOUT_S = 2
TURN_API_HOST, TURN_API_PATH = "127.0.0.1", "/turn"
DEBUG_LEVEL = 3  # errors and warnings; 4 adds every request, 7 is libnice-level detail
INSTALL_HINT = "run `make up` (it installs it) or `apt-get install janus`"


class JanusNotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class JanusTurn:
    """Where Janus asks for its TURN credentials (a TurnApi on loopback), and the key it shows there."""

    url: str
    key: str


class TurnApi:
    """A TURN REST API endpoint for Janus alone (draft-uberti-behave-turn-rest, what Janus's `turn_rest_api`
    speaks), on loopback in a thread of the process that runs Janus: each request that shows the key gets a fresh
    credential for the first turn: URL the browsers are given, made like theirs (gateway/web/turn.py) and lasting
    JANUS_TURN_TTL_S. So no credential is written into Janus's configuration, and none lasts for weeks."""

    def __init__(self, turn: TurnOptions, clock: Callable[[], float] = time.time) -> None:
        self.turn = turn
        self.clock = clock
        self.key = secrets.token_urlsafe(24)
        self.uris = [url for url in turn.urls if url.startswith("turn:")][:1]
        self.issued = 0
        self._server = ThreadingHTTPServer((TURN_API_HOST, 0), _turn_api_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="turn-api", daemon=True)

    @classmethod
    @contextlib.contextmanager
    def serving(cls, turn: TurnOptions) -> Iterator[TurnApi | None]:
        """A running TurnApi while the block runs, or None when there is no turn: URL to give Janus."""
        if not any(url.startswith("turn:") for url in turn.urls):
            yield None
            return
        api = cls(turn)
        api._thread.start()
        try:
            yield api
        finally:
            api._server.shutdown()
            api._server.server_close()

    @property
    def janus(self) -> JanusTurn:
        return JanusTurn(f"http://{TURN_API_HOST}:{self._server.server_port}{TURN_API_PATH}", self.key)

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """(status, body) for a request Janus makes: GET /turn?service=turn&key=KEY&username=HANDLE."""
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        key = query.get("key", [""])[0]
        if url.path != TURN_API_PATH or not hmac.compare_digest(key.encode(), self.key.encode()):
            return 403, {"error": "unknown path or key"}
        user = "janus-" + "".join(c for c in query.get("username", [""])[0][:20] if c.isalnum())
        credential = turn_credential(self.turn.secret, user, self.clock() + JANUS_TURN_TTL_S)
        self.issued += 1
        body = {"username": credential.username, "password": credential.password, "ttl": int(JANUS_TURN_TTL_S)}
        return 200, {**body, "uris": self.uris}


def _turn_api_handler(api: TurnApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = api.answer(self.path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: each request line carries the key."""

    return Handler


@dataclass(frozen=True)
class JanusConfig:
    """What our Janus instance needs; every field has a safe default for one machine."""

    ws_port: int
    api_secret: str
    admin_key: str
    ws_ip: str = "127.0.0.1"  # where the Janus API listens; only the gateway talks to it
    ice_enforce_list: str = ""  # interfaces to gather ICE candidates on (comma-separated); empty: all
    nat_1_1_mapping: str = ""  # the public IP of a host behind 1:1 NAT (a cloud VM), put in its candidates
    stun_server: str = ""  # host:port, for a Janus behind a NAT that is not 1:1
    rtp_port_range: str = RTP_PORT_RANGE
    debug_level: int = DEBUG_LEVEL
    turn: JanusTurn | None = None  # where Janus gets credentials for the browsers' TURN server (relayed candidates)

    @property
    def url(self) -> str:
        return f"ws://{self.ws_ip}:{self.ws_port}"

    @classmethod
    def fresh(cls, ws_port: int, **options: Any) -> JanusConfig:
        """A configuration with newly drawn secrets (what `babelroom up` and the tests start)."""
        return cls(ws_port, secrets.token_urlsafe(24), secrets.token_urlsafe(24), **options)  # type: ignore[arg-type]


def find_binary() -> str:
    binary = shutil.which(JANUS_BINARY)
    if binary is None:
        raise JanusNotInstalled(f"Janus is not installed: {INSTALL_HINT}")
    return binary


def module_folder() -> Path:
    for pattern in MODULE_FOLDERS:
        for folder in sorted(glob.glob(pattern)):
            if (Path(folder) / "plugins" / PLUGINS[0]).exists():
                return Path(folder)
    raise JanusNotInstalled(f"Janus's VideoRoom plugin ({PLUGINS[0]}) was not found: {INSTALL_HINT}")


def write_config(folder: Path, config: JanusConfig) -> Path:
    """Write Janus's configuration into `folder` and return the main file. Only the modules we use are
    linked into the plugin and transport folders Janus scans, so nothing else is ever loaded."""
    modules = module_folder()
    for kind, names in (("plugins", PLUGINS), ("transports", TRANSPORTS)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / kind / name
            if not link.exists():
                link.symlink_to(modules / kind / name)
    (folder / "none").mkdir(exist_ok=True)  # no event handlers, no loggers
    main = folder / "janus.jcfg"
    main.write_text(_main_config(folder, config))
    (folder / "janus.plugin.videoroom.jcfg").write_text(_videoroom_config(config))
    (folder / "janus.transport.websockets.jcfg").write_text(_websockets_config(config))
    return main


def janus_env(env: Mapping[str, str]) -> dict[str, str]:
    """Janus's environment: at most two glibc heaps. It runs a thread per session and per handle, each with a
    heap of its own otherwise, and a meeting that comes and goes left them fragmented (pipeline/memory.py)."""
    return {**env, "MALLOC_ARENA_MAX": env.get("MALLOC_ARENA_MAX", "2")}


def janus_argv(folder: Path) -> list[str]:
    return [find_binary(), "--config", str(folder / "janus.jcfg"), "--configs-folder", str(folder), "--disable-colors"]


def _main_config(folder: Path, c: JanusConfig) -> str:
    nat = [f"ice_enforce_list = {_q(c.ice_enforce_list)}"] if c.ice_enforce_list else []
    if c.nat_1_1_mapping:
        nat.append(f"nat_1_1_mapping = {_q(c.nat_1_1_mapping)}")
    if c.stun_server:
        host, _, port = c.stun_server.rpartition(":")
        nat += [f"stun_server = {_q(host)}", f"stun_port = {int(port)}"]
    if c.turn:
        nat += [f"turn_rest_api = {_q(c.turn.url)}", f"turn_rest_api_key = {_q(c.turn.key)}"]
        nat += ['turn_rest_api_method = "GET"', f"turn_rest_api_timeout = {TURN_API_TIMEOUT_S}"]
    nat.append("ignore_mdns = true")  # browsers' .local candidates cannot be resolved by a server
    return _jcfg(
        general={
            "configs_folder": _q(str(folder)),
            "plugins_folder": _q(str(folder / "plugins")),
            "transports_folder": _q(str(folder / "transports")),
            "events_folder": _q(str(folder / "none")),
            "loggers_folder": _q(str(folder / "none")),
            "debug_level": str(c.debug_level),
            "api_secret": _q(c.api_secret),
            "admin_secret": _q(secrets.token_urlsafe(24)),  # the Admin API is not exposed at all
            "session_timeout": str(SESSION_TIMEOUT_S),
            "server_name": _q("BabelRoom"),
        },
        media={"rtp_port_range": _q(c.rtp_port_range)},
        nat=dict(line.split(" = ", 1) for line in nat),
    )


def _videoroom_config(c: JanusConfig) -> str:
    # No static rooms: the gateway creates each room (private, with a pin and a secret) through the API.
    return _jcfg(
        general={
            "admin_key": _q(c.admin_key),
            "lock_rtp_forward": "true",
            "lock_play_file": "true",
            "string_ids": "false",
            "events": "false",
        }
    )


def _websockets_config(c: JanusConfig) -> str:
    return _jcfg(
        general={"json": _q("compact"), "ws": "true", "ws_port": str(c.ws_port), "ws_ip": _q(c.ws_ip), "wss": "false"},
        admin={"admin_ws": "false", "admin_wss": "false"},
    )


def _jcfg(**sections: dict[str, str]) -> str:
    body = [
        f"{name}: {{\n" + "".join(f"\t{key} = {value}\n" for key, value in items.items()) + "}\n"
        for name, items in sections.items()
    ]
    return "# Generated by BabelRoom (babelroom/janus.py); edits are overwritten.\n" + "".join(body)


def _q(value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"unsupported character in Janus setting {value!r}")
    return f'"{value}"'


def config_from_env(env: Mapping[str, str], ws_port: int, turn: TurnApi | None = None) -> JanusConfig:
    """The embedded Janus's settings: fresh secrets, the ICE settings a deployment may need, and where it gets
    TURN credentials (TurnApi.serving(TurnOptions.from_env(env)), running while Janus does)."""
    return JanusConfig.fresh(
        ws_port,
        ice_enforce_list=env.get("BABELROOM_JANUS_ICE_INTERFACES", ""),
        nat_1_1_mapping=env.get("BABELROOM_JANUS_NAT_1_1", ""),
        stun_server=env.get("BABELROOM_JANUS_STUN", ""),
        rtp_port_range=env.get("BABELROOM_JANUS_RTP_PORTS", RTP_PORT_RANGE),
        turn=turn.janus if turn else None,
    )


def gateway_env(config: JanusConfig) -> dict[str, str]:
    """What the gateway needs to drive this Janus (see gateway/options.py JanusOptions)."""
    return {
        "BABELROOM_JANUS_URL": config.url,
        "BABELROOM_JANUS_API_SECRET": config.api_secret,
        "BABELROOM_JANUS_ADMIN_KEY": config.admin_key,
    }


def wait_for_janus(config: JanusConfig, timeout_s: float = 15.0) -> None:
    """Until Janus's WebSocket port accepts connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((config.ws_ip, config.ws_port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"Janus did not open {config.url} within {timeout_s:.0f} s") from None
            time.sleep(0.05)
