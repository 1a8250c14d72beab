"""Hosts of a test's own on one machine: network namespaces on one bridge, as babelroom/netns.py makes one.

`lan` runs inside the suite's namespace (tests/conftest.py): it adds a bridge carrying SUBNET.1, which the test
itself (and the browsers it starts) use, and one namespace per host, each held by a `sleep` process and joined to
the bridge by a veth pair whose inner end is `eth0` with SUBNET.10, .11, ... Processes run on a host through
`nsenter`. Every address is in 198.18.0.0/15 (RFC 2544, never routed) on the bridge: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SUBNET = "198.18.1"
BRIDGE = "brhosts"
INTERFACE = "eth0"  # each host's one interface (Janus gathers its candidates there)


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    holder: subprocess.Popen[bytes]  # keeps the namespace alive

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command`, run on this host."""
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *command]

    def run(self, *command: str) -> None:
        subprocess.run(self.argv(command), check=True, capture_output=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@contextlib.contextmanager
def lan(names: Sequence[str]) -> Iterator[tuple[str, dict[str, Host]]]:
    """Hosts named `names` on one bridge; yields this namespace's address on it and the hosts by name. Whatever
    runs on them must be stopped before the block ends."""
    hosts: dict[str, Host] = {}
    _ip("link", "add", BRIDGE, "type", "bridge")
    try:
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for number, name in enumerate(names, start=10):
            holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
            host = hosts[name] = Host(name, f"{SUBNET}.{number}", holder)
            outer, inner = f"ho{number}", f"hi{number}"
            _wait_for_namespace(holder)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", str(holder.pid))
            _ip("link", "set", outer, "master", BRIDGE)
            _ip("link", "set", outer, "up")
            host.run("ip", "link", "set", "lo", "up")
            host.run("ip", "link", "set", inner, "name", INTERFACE)
            host.run("ip", "addr", "add", f"{host.address}/24", "dev", INTERFACE)
            host.run("ip", "link", "set", INTERFACE, "up")
        yield f"{SUBNET}.1", hosts
    finally:
        for host in hosts.values():
            host.holder.kill()
            host.holder.wait()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _wait_for_namespace(holder: subprocess.Popen[bytes]) -> None:
    """Until `unshare` has made the namespace and become `sleep` in it (its namespace differs from ours)."""
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                return
        time.sleep(0.01)
    raise RuntimeError("the host's namespace was not made within 10 s")
