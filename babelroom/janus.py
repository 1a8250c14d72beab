"""Janus, the SFU: the configuration we generate for it, and the command line that runs it.

Janus forwards every participant's camera and microphone to the others as RTP, never decoding them:
that is the media plane. The gateway only drives it. The configuration written here loads only what
BabelRoom uses (the VideoRoom plugin and the WebSockets transport, no event handlers, no loggers), binds
the API to one address (loopback for `babelroom up`), requires an API secret on every request, and
locks room creation and RTP forwarding behind an admin key. Both secrets are known to the gateway
only: browsers reach Janus through the gateway's filtering proxy (gateway/web/proxy.py).
"""

from __future__ import annotations

import glob
import secrets
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.options import TurnOptions
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
# Janus's own TURN credential lasts this long: a Janus running longer (restarted without `babelroom up` or
# `babelroom janus` writing its configuration again) loses its relayed candidates, not its host ones.
JANUS_TURN_TTL_S = 30 * 24 * 3600
DEBUG_LEVEL = 3  # errors and warnings; 4 adds every request, 7 is libnice-level detail
INSTALL_HINT = "run `make up` (it installs it) or `apt-get install janus`"


class JanusNotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class JanusTurn:
    """Janus's own TURN credential: computed like a browser's (TURN REST API), for JANUS_TURN_TTL_S from
    the moment its configuration is written. Janus takes one static user and password in janus.jcfg."""

    host: str
    port: int
    username: str
    password: str

    @classmethod
    def from_options(cls, turn: TurnOptions, now: float) -> JanusTurn | None:
        """From the first turn: URL (turn:HOST:PORT?transport=udp), or None when there is none."""
        plain = [url for url in turn.urls if url.startswith("turn:")]
        if not plain:
            return None
        host, _, port = plain[0].removeprefix("turn:").split("?")[0].rpartition(":")
        credential = turn_credential(turn.secret, "janus", now + JANUS_TURN_TTL_S)
        return cls(host, int(port), credential.username, credential.password)


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
    turn: JanusTurn | None = None  # the TURN server the browsers are given, for Janus's own relayed candidates

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
        nat += [f"turn_server = {_q(c.turn.host)}", f"turn_port = {c.turn.port}", 'turn_type = "udp"']
        nat += [f"turn_user = {_q(c.turn.username)}", f"turn_pwd = {_q(c.turn.password)}"]
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


def config_from_env(env: Mapping[str, str], ws_port: int) -> JanusConfig:
    """The embedded Janus's settings: fresh secrets, and the ICE settings a deployment may need."""
    return JanusConfig.fresh(
        ws_port,
        ice_enforce_list=env.get("BABELROOM_JANUS_ICE_INTERFACES", ""),
        nat_1_1_mapping=env.get("BABELROOM_JANUS_NAT_1_1", ""),
        stun_server=env.get("BABELROOM_JANUS_STUN", ""),
        rtp_port_range=env.get("BABELROOM_JANUS_RTP_PORTS", RTP_PORT_RANGE),
        turn=JanusTurn.from_options(TurnOptions.from_env(env), time.time()),
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
