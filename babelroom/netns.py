"""A network namespace of our own, for media tests and the media benchmark.

Janus gathers no ICE candidates on loopback interfaces, so media between Janus, aiortc and browsers on
one machine needs an ordinary interface. `enter` makes one where nothing else can be reached: a new
network namespace (no route to any other host), loopback up, and a veth pair whose one end carries
TEST_ADDRESS. Traffic to that address stays inside the namespace, and traffic to any other address
has nowhere to go. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess

CLONE_NEWNET = 0x40000000
TEST_INTERFACE = "v0"
# From 198.18.0.0/15, the range reserved for network benchmarks (RFC 2544): never routed anywhere.
TEST_ADDRESS = "198.18.0.1"
_SETUP = (
    ("link", "set", "lo", "up"),
    ("link", "add", TEST_INTERFACE, "type", "veth", "peer", "name", "v1"),
    ("addr", "add", f"{TEST_ADDRESS}/24", "dev", TEST_INTERFACE),
    ("link", "set", TEST_INTERFACE, "up"),
    ("link", "set", "v1", "up"),
    # Firefox gathers no ICE candidates on a host without a default route. This one leads into the veth
    # pair, whose far end has no address and nothing behind it: packets for any other host die there.
    ("route", "add", "default", "dev", TEST_INTERFACE),
)


class NamespaceError(RuntimeError):
    pass


def enter() -> None:
    """Move the calling thread, and every process it starts from now on, into a fresh namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        error = os.strerror(ctypes.get_errno())
        raise NamespaceError(f"cannot make a network namespace ({error}): media tests and benchmarks need root")
    for args in _SETUP:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise NamespaceError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def inside() -> bool:
    """Whether this thread is in a namespace `enter` made: TEST_ADDRESS is one of its own addresses.
    (Not /sys/class/net: sysfs shows the namespace that mounted it, not the caller's.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((TEST_ADDRESS, 0))
        except OSError:
            return False
    return True
