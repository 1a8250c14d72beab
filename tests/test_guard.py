"""Limits per address for those not yet in, and who may read /healthz and /metrics (gateway/web/guard.py, issue
28): joins and failed token checks from one address are answered 429 with Retry-After past their budget, while
another address carries on; X-Forwarded-For names the client only when the peer is a trusted proxy; the
monitoring endpoints can be kept to loopback or a bearer token, which `babelroom health` then sends. Against
the real gateway (a real Janus, a real Redis), over real sockets from distinct loopback and veth addresses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestServer

from babelroom.health import gateway_problem
from babelroom.janus import JanusConfig
from gateway.options import GatewayOptions, LimitOptions, MonitoringOptions
from gateway.web.app import create_app
from gateway.web.guard import MAX_TRACKED_ADDRESSES, AddressLimiter, client_address, networks
from gateway.web.tokens import issue_token
from pipeline.bus import Bus
from pipeline.config import BusOptions
from tests.test_gateway import ROOM, SECRET, gateway_options, wait_for_janus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limiter = AddressLimiter(burst=3, per_minute=6.0, clock=clock)  # one every 10 s
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0) and limiter.take("b") == 0.0, "each address has its own"
    clock.now += 5
    assert limiter.wait_s("a") == pytest.approx(5.0)
    clock.now += 5
    assert limiter.take("a") == 0.0 and limiter.take("a") == pytest.approx(10.0)
    clock.now += 3600
    assert limiter.wait_s("a") == 0.0 and limiter.buckets["a"].tokens == 3, "never more than the burst"
    limiter.spend("c")
    assert limiter.buckets["c"].tokens == 2


def test_the_longest_unseen_addresses_are_forgotten_first() -> None:
    limiter = AddressLimiter(burst=1, per_minute=1.0, clock=Clock())
    limiter.take("first")
    for i in range(MAX_TRACKED_ADDRESSES):
        limiter.wait_s(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(limiter.buckets) == MAX_TRACKED_ADDRESSES and "first" not in limiter.buckets


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], (), "203.0.113.9"),  # no trusted proxy: the header is anyone's
        ("203.0.113.9", ["198.51.100.1"], ("10.0.0.0/8",), "203.0.113.9"),  # the peer is not a trusted proxy
        ("10.0.0.5", ["198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),  # what the client wrote is left
        ("10.0.0.5", ["198.51.100.1, 10.0.0.7"], ("10.0.0.0/8",), "198.51.100.1"),  # a chain of trusted proxies
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),  # two headers read as one
        ("10.0.0.5", ["6.6.6.6, junk, 10.0.0.7"], ("10.0.0.0/8",), "10.0.0.7"),  # nothing left of junk is believed
        ("10.0.0.5", [], ("10.0.0.5",), "10.0.0.5"),
        ("2001:db8:1:2:3:4:5:6", [], (), "2001:db8:1:2::/64"),  # a host holds its whole /64
        ("::ffff:203.0.113.9", [], (), "203.0.113.9"),
        (None, [], (), "unknown"),
    ],
)
def test_the_client_address_comes_from_x_forwarded_for_only_through_a_trusted_proxy(
    peer: str | None, forwarded: list[str], trusted: tuple[str, ...], expected: str
) -> None:
    assert client_address(peer, forwarded, networks(trusted)) == expected


@contextlib.asynccontextmanager
async def gateway(
    redis_url: str, prefix: str, janus_config: JanusConfig, host: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[str]:
    app = create_app(
        Bus.connect(BusOptions(redis_url=redis_url, prefix=prefix)), gateway_options(janus_config, **overrides)
    )
    async with TestServer(app, host=host) as server:
        yield str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def client(base_url: str, source: str = "127.0.0.1") -> AsyncIterator[ClientSession]:
    """A client whose connections come from `source` (any 127.0.0.0/8 address is this host's loopback)."""
    async with ClientSession(base_url=base_url, connector=TCPConnector(local_addr=(source, 0))) as http:
        yield http


async def join(http: ClientSession, token: str, **headers: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"speak": "en", "hear": "es", "token": token}
    async with http.post(f"/api/rooms/{ROOM}/join", json=body, headers=headers) as reply:
        return reply.status, await reply.json(), dict(reply.headers)


async def test_failed_token_checks_and_joins_from_one_address_are_limited_and_others_carry_on(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    limits = LimitOptions(join_burst=3, joins_per_minute=1.0, auth_failure_burst=4, auth_failures_per_minute=2.0)
    async with (
        gateway(redis_url, stream_prefix, janus_config, limits=limits) as url,
        client(url, "127.0.0.1") as mallory,
        client(url, "127.0.0.2") as ana,
    ):
        await wait_for_janus(ana)
        wrong = issue_token("not the secret", ROOM, "Mallory")
        assert [(await join(mallory, wrong))[0] for _ in range(3)] == [401] * 3, "within the join burst"
        status, body, headers = await join(mallory, wrong)
        assert status == 429 and int(headers["Retry-After"]) == 60 and "joins" in body["error"], (status, body)
        async with mallory.get(f"/api/rooms/{ROOM}?token={wrong}") as reply:
            assert reply.status == 401, "a fourth failure, not a join"
        for path in (f"/api/rooms/{ROOM}?token={wrong}", f"/room/{ROOM}?token={wrong}", "/api/sessions/x/leave"):
            async with mallory.request("POST" if "leave" in path else "GET", path) as reply:
                assert reply.status == 429 and int(reply.headers["Retry-After"]) == 30, path
        async with mallory.get("/static/room.js") as reply:
            assert reply.status == 200, "what checks no token stays open"
        status, body, _ = await join(ana, issue_token(SECRET, ROOM, "Ana"))
        assert status == 200, f"another address joins as before: {body}"


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    limits = LimitOptions(auth_failure_burst=2, auth_failures_per_minute=1.0, trusted_proxies=("127.0.0.1",))
    wrong = issue_token("not the secret", ROOM, "Mallory")
    async with (
        gateway(redis_url, stream_prefix, janus_config, limits=limits) as url,
        client(url, "127.0.0.1") as proxy,
        client(url, "127.0.0.2") as untrusted,
    ):
        statuses = [(await join(proxy, wrong, **{"X-Forwarded-For": "203.0.113.7"}))[0] for _ in range(3)]
        assert statuses == [401, 401, 429], "the forwarded client is limited"
        assert (await join(proxy, wrong, **{"X-Forwarded-For": "203.0.113.8"}))[0] == 401, "not its neighbour"
        spoofed = [(await join(untrusted, wrong, **{"X-Forwarded-For": f"198.51.100.{i}"}))[0] for i in range(3)]
        assert spoofed == [401, 401, 429], "an untrusted peer's X-Forwarded-For is ignored"


async def test_monitoring_can_be_kept_to_loopback(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig, media_namespace: str
) -> None:
    loopback_only = MonitoringOptions(access="loopback")
    async with gateway(redis_url, stream_prefix, janus_config, host="0.0.0.0", monitoring=loopback_only) as url:
        port = url.rsplit(":", 1)[1]
        async with client(f"http://127.0.0.1:{port}") as local, client(f"http://{media_namespace}:{port}",
                                                                        media_namespace) as remote:  # fmt: skip
            for path in ("/healthz", "/metrics"):
                async with local.get(path) as reply:
                    assert reply.status == 200, path
                async with remote.get(path) as reply:
                    assert reply.status == 403 and "loopback" in (await reply.json())["error"], path
                async with remote.get(path, headers={"X-Forwarded-For": "127.0.0.1"}) as reply:
                    assert reply.status == 403, "never judged by a header"
            async with remote.get("/api/config") as reply:
                assert reply.status == 200


async def test_monitoring_can_ask_for_a_bearer_token_which_babelroom_health_sends(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    token = MonitoringOptions(access="token", token="monitoring-secret")
    async with gateway(redis_url, stream_prefix, janus_config, monitoring=token) as url, client(url) as http:
        for path in ("/healthz", "/metrics"):
            async with http.get(path) as reply:
                assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer"), path
            async with http.get(path, headers={"Authorization": "Bearer wrong"}) as reply:
                assert reply.status == 401, path
            async with http.get(path, headers={"Authorization": "Bearer monitoring-secret"}) as reply:
                assert reply.status == 200, path
        problem = await gateway_problem(f"{url}/healthz")
        assert problem is not None and "401" in problem
        for _ in range(100):
            if await gateway_problem(f"{url}/healthz", token="monitoring-secret") is None:
                break
        else:
            raise AssertionError("babelroom health never found the gateway ready with the token")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"BABELROOM_TRUSTED_PROXIES": "caddy"}, "not an address or a network"),
        ({"BABELROOM_MONITORING_ACCESS": "private"}, "choose one of open, loopback, token"),
        ({"BABELROOM_MONITORING_ACCESS": "token"}, "needs BABELROOM_MONITORING_TOKEN"),
    ],
)
def test_bad_limit_and_monitoring_settings_are_named(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        GatewayOptions.from_env(env)


def test_the_settings_are_read_from_the_environment() -> None:
    options = GatewayOptions.from_env(
        {
            "BABELROOM_JOIN_BURST": "5",
            "BABELROOM_TRUSTED_PROXIES": "172.30.77.10, 10.0.0.0/8",
            "BABELROOM_MONITORING_ACCESS": "Loopback",
        }
    )
    assert options.limits.join_burst == 5 and options.limits.trusted_proxies == ("172.30.77.10", "10.0.0.0/8")
    assert options.monitoring.access == "loopback" and GatewayOptions().monitoring.access == "open"
