"""Malformed HTTP requests against every endpoint the gateway has: never a 5xx, every /api error is JSON,
and the gateway still serves afterwards. The harness (tests/http_fuzz.py) is endpoint-agnostic: a new
endpoint is one more `Endpoint` line."""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection

from gateway.app import create_app
from gateway.options import GatewayOptions
from pipeline.bus import Bus
from pipeline.config import BusOptions
from tests.http_fuzz import Endpoint, fuzz_requests, problems, send

REQUESTS = 1000


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def endpoints() -> list[Endpoint]:
    join = {"name": "Ana", "speak": "en", "hear": "es", "options": {"consent": True}, "sdp": await offer_sdp()}
    room = {"room": "demo"}
    return [
        Endpoint("GET", "/"),
        Endpoint("GET", "/room/{room}", room, query={"name": "Ana", "speak": "en", "hear": "es"}),
        Endpoint("GET", "/api/config"),
        Endpoint("POST", "/api/rooms/{room}/join", room, body=join),
        Endpoint("GET", "/api/rooms/{room}", room),
        Endpoint("POST", "/api/sessions/{session}/leave", {"session": "0123456789ab"}),
        Endpoint("GET", "/healthz"),
        Endpoint("GET", "/static/{file}", {"file": "room.js"}),
    ]


@pytest.fixture
async def base_url(redis_url: str, stream_prefix: str) -> AsyncIterator[str]:
    bus = Bus.connect(BusOptions(redis_url=redis_url, prefix=stream_prefix))
    app = create_app(bus, GatewayOptions(open_rooms=True))
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url(""))


async def test_malformed_requests_get_a_json_4xx_never_a_5xx(base_url: str) -> None:
    requests = fuzz_requests(await endpoints(), REQUESTS)
    started = time.monotonic()
    found: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()
    async with ClientSession() as http:
        for request in requests:
            outcome = await send(http, base_url, request)
            statuses[outcome.status] += 1
            found += problems(request, outcome)
        async with http.get(f"{base_url}/api/config") as reply:
            still_serving = reply.status
    print(f"{len(requests)} requests in {time.monotonic() - started:.1f} s; statuses {dict(sorted(statuses.items()))}")
    assert not found, "\n".join(found[:20])
    assert still_serving == 200
