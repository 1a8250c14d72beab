"""coturn, the TURN relay, for participants whose networks block UDP (`babelroom up --turn`, the tests).

Its configuration is written to a private file, not the command line (the shared secret would show in
`ps`). Authentication is the TURN REST API (`use-auth-secret`): the gateway computes each join's
credential from the same secret (gateway/web/turn.py), so coturn keeps no user list. Peers may be
restricted to the media server's addresses, so the relay cannot be used to reach anything else.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TURN_PORT = 3478  # UDP and TCP
TURNS_PORT = 5349  # TLS, when given a certificate
RELAY_PORTS = (49152, 65535)  # where coturn allocates relayed addresses (they face the media server)
REALM = "babelroom"
INSTALL_HINT = "run `apt-get install coturn` (it is in the Makefile's APT_RUNTIME)"


@dataclass(frozen=True)
class CoturnConfig:
    listen_ip: str = "0.0.0.0"
    port: int = TURN_PORT
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    relay_ip: str = ""  # the address relayed traffic leaves from; empty: coturn picks
    allowed_peers: tuple[str, ...] = ()  # when given, the only addresses the relay may reach (the media server)
    cert: str = ""  # with a key: TURN over TLS on TURNS_PORT
    key: str = ""
    relay_ports: tuple[int, int] = RELAY_PORTS

    def urls(self, host: str) -> list[str]:
        """What browsers are given: UDP first, then TCP (for networks that block UDP), then TLS."""
        urls = [f"turn:{host}:{self.port}?transport=udp", f"turn:{host}:{self.port}?transport=tcp"]
        if self.cert:
            urls.append(f"turns:{host}:{TURNS_PORT}?transport=tcp")
        return urls


def find_binary() -> str:
    binary = shutil.which("turnserver")
    if binary is None:
        raise SystemExit(f"coturn is not installed: {INSTALL_HINT}")
    return binary


def write_config(folder: Path, config: CoturnConfig) -> Path:
    path = folder / "turnserver.conf"
    path.touch(mode=0o600)
    path.write_text("".join(f"{line}\n" for line in config_lines(config)))
    return path


def config_lines(c: CoturnConfig) -> list[str]:
    lines = [
        f"listening-ip={c.listen_ip}",
        f"listening-port={c.port}",
        f"min-port={c.relay_ports[0]}",
        f"max-port={c.relay_ports[1]}",
        "use-auth-secret",
        f"static-auth-secret={c.secret}",
        f"realm={REALM}",
        "fingerprint",
        "no-cli",  # no telnet console
        "no-multicast-peers",
        "no-software-attribute",
        "log-file=stdout",
        "simple-log",
        "verbose",  # one line per allocation, refusal and session end: what an operator reads
    ]
    if c.relay_ip:
        lines.append(f"relay-ip={c.relay_ip}")
    if c.allowed_peers:
        lines += ["denied-peer-ip=0.0.0.0-255.255.255.255", "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        lines += [f"allowed-peer-ip={peer}" for peer in c.allowed_peers]
    if c.cert:
        lines += [f"tls-listening-port={TURNS_PORT}", f"cert={c.cert}", f"pkey={c.key}", "no-tlsv1", "no-tlsv1_1"]
    else:
        lines += ["no-tls", "no-dtls"]
    return lines


def coturn_argv(config_file: Path) -> Sequence[str]:
    return [find_binary(), "-c", str(config_file)]
