"""The gateway's door for those not yet in: limits per client address, and who may read /healthz and /metrics.

- Joins from one address are limited (a token bucket: a burst, then a steady rate), and so are failed checks
  of a token, a ticket or the monitoring bearer token. An address past its failures is answered 429 on every
  request that checks one, before anything is read or parsed; past its joins, on joins. Each 429 says in
  `Retry-After` when to try again. A 429 costs a dictionary lookup: a flood of them leaves the rooms alone.
- The client address is the connection's peer, unless the peer is a trusted proxy (LimitOptions): then the
  last address in X-Forwarded-For that is not a trusted proxy. An IPv6 client counts by its /64 (one host
  holds a whole /64).
- /healthz and /metrics are served to anyone, to loopback only, or with a bearer token (MonitoringOptions).

Both are one aiohttp middleware, `guard`, the outermost.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from gateway.options import LimitOptions, MonitoringOptions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses remembered at once; beyond, the longest unseen are forgotten (a forgotten address starts afresh).
MAX_TRACKED_ADDRESSES = 65_536
# X-Forwarded-For entries looked at, from the right: a chain of proxies is short; the header may not be.
MAX_FORWARDED_HOPS = 8
MONITORING_PATHS = frozenset({"/healthz", "/metrics"})
# Requests that check a token, a ticket or the monitoring token: an address past its failures gets 429 here.
CHECKING_PREFIXES = ("/api/rooms/", "/api/sessions/", "/room/", *MONITORING_PATHS)


@dataclass
class Bucket:
    tokens: float
    updated: float


class AddressLimiter:
    """A token bucket per address: `burst` at most, refilled at `per_minute`; the least recently seen addresses
    are forgotten beyond MAX_TRACKED_ADDRESSES."""

    def __init__(self, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()

    def wait_s(self, address: str) -> float:
        """Seconds until `address` may spend one (0: now), spending nothing."""
        bucket = self._refilled(address)
        if bucket.tokens >= 1.0:
            return 0.0
        return math.inf if self.rate <= 0 else (1.0 - bucket.tokens) / self.rate

    def take(self, address: str) -> float:
        """Spend one if there is one (returns 0); otherwise the seconds until there is, spending nothing."""
        wait = self.wait_s(address)
        if wait == 0.0:
            self.buckets[address].tokens -= 1.0
        return wait

    def spend(self, address: str) -> None:
        """Spend one, down to zero."""
        bucket = self._refilled(address)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def _refilled(self, address: str) -> Bucket:
        now = self.clock()
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = Bucket(self.burst, now)
            if len(self.buckets) > MAX_TRACKED_ADDRESSES:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(address)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket


def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """Who a request comes from, as the limits count it: see the module's docstring."""
    address = _parse(peer)
    if address is not None and _trusted(address, trusted):
        hops = [hop for header in forwarded_for for hop in header.split(",")][-MAX_FORWARDED_HOPS:]
        for hop in reversed(hops):
            forwarded = _parse(hop.strip())
            if forwarded is None:
                break  # a malformed entry: what lies left of it cannot be believed either
            address = forwarded
            if not _trusted(forwarded, trusted):
                break
    if address is None:
        return peer or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _parse(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def too_many(request: web.Request, wait_s: float, what: str) -> web.Response:
    retry_after = max(1, math.ceil(min(wait_s, 24 * 3600)))
    message = f"too many {what} from your address: try again in {retry_after} s"
    headers = {hdrs.RETRY_AFTER: str(retry_after)}
    if request.path.startswith("/api/"):
        return web.json_response({"error": message}, status=429, headers=headers)
    return web.Response(status=429, text=message, headers=headers)


def monitoring_refusal(request: web.Request, options: MonitoringOptions) -> web.Response | None:
    """None if this request may read /healthz or /metrics; else the answer that says why not."""
    if options.access == "loopback":
        peer = _parse(request.remote)
        if peer is None or not peer.is_loopback:
            return web.json_response({"error": "served on this host's loopback only"}, status=403)
    elif options.access == "token":
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        expected = f"Bearer {options.token}"
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            return web.json_response(
                {"error": "a monitoring bearer token is required"},
                status=401,
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="babelroom monitoring"'},
            )
    return None


def guard(limits: LimitOptions, monitoring: MonitoringOptions) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: limits per address, and the monitoring endpoints' access."""
    joins = AddressLimiter(limits.join_burst, limits.joins_per_minute)
    failures = AddressLimiter(limits.auth_failure_burst, limits.auth_failures_per_minute)
    trusted = networks(limits.trusted_proxies)

    @web.middleware
    async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(CHECKING_PREFIXES):
            return await handler(request)
        address = client_address(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted)
        if wait := failures.wait_s(address):
            return too_many(request, wait, "failed token checks")
        if request.method == "POST" and request.path.endswith("/join") and (wait := joins.take(address)):
            return too_many(request, wait, "joins")
        if request.path in MONITORING_PATHS and (refusal := monitoring_refusal(request, monitoring)):
            if refusal.status == 401:
                failures.spend(address)
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 401:
                failures.spend(address)
            raise
        if response.status == 401:
            failures.spend(address)
        return response

    return guard_middleware
