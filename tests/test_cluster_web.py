"""Two media nodes over real HTTP, one real Janus and a real Redis (gateway/web/cluster.py): a page or a join that
reaches the wrong node is sent to the room's node, keeping its query and token; the join API answers the other
nodes' pages (CORS) and no one else's; tokens and TURN credentials are checked on every node, and a token still
scopes its bearer to one room; a full cluster answers at once, with why; /metrics and /healthz show the nodes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from babelroom.janus import JanusConfig
from babelroom.supervisor import free_port
from gateway.options import NodeOptions, TurnOptions
from gateway.web.app import create_app
from gateway.web.tokens import issue_token
from pipeline.bus import Bus
from pipeline.config import BusOptions
from tests.test_gateway import SECRET, gateway_options, wait_for_janus

TURN = TurnOptions(("turn:198.18.0.1:3478?transport=udp",), "turn-secret")
WAIT_S = 20.0


@contextlib.asynccontextmanager
async def media_node(
    redis_url: str, prefix: str, janus_config: JanusConfig, node_id: str, **limits: Any
) -> AsyncIterator[tuple[str, ClientSession]]:
    """A gateway that is media node `node_id` (the shared Janus stands in for its own), with a client."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    node = NodeOptions(id=node_id, url=url, report_s=0.2, live_s=2.0, max_load=0.0, **limits)
    options = gateway_options(janus_config, node=node, turn=TURN)
    app = create_app(Bus.connect(BusOptions(redis_url=redis_url, prefix=prefix)), options)
    async with TestServer(app, host="127.0.0.1", port=port), ClientSession(base_url=url) as http:
        await wait_for_janus(http)
        yield url, http


async def metrics_show(http: ClientSession, *lines: str, live: int = 0) -> None:
    """Until this node's /metrics has every line and at least `live` live nodes (each has reported)."""
    deadline = time.monotonic() + WAIT_S
    text = ""
    while time.monotonic() < deadline:
        async with http.get("/metrics") as response:
            text = await response.text()
        if text.count("babelroom_node_live{") >= live and all(line in text for line in lines):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/metrics did not show {lines} and {live} nodes within {WAIT_S} s: {text[-2000:]}")


def join_body(room: str, name: str) -> dict[str, Any]:
    return {"speak": "en", "hear": "es", "token": issue_token(SECRET, room, name)}


def turn_password(username: str) -> str:
    return base64.b64encode(hmac.new(TURN.secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def test_a_join_or_page_on_the_wrong_node_is_sent_to_the_rooms_node(
    redis_url: str, stream_prefix: str, janus_config: JanusConfig
) -> None:
    async with (
        media_node(redis_url, stream_prefix, janus_config, "node-a") as (a_url, a),
        media_node(redis_url, stream_prefix, janus_config, "node-b") as (b_url, b),
    ):
        await metrics_show(a, live=2)
        async with b.post("/api/rooms/ops/join", json=join_body("ops", "Ana")) as response:
            joined = await response.json()
            assert response.status == 200, joined
        assert joined["node"] == {"id": "node-b", "url": b_url} and joined["peers"] == [a_url]
        turn = joined["ice_servers"][-1]
        assert turn["credential"] == turn_password(turn["username"]), "a TURN credential of the shared secret"

        token = join_body("ops", "Bea")["token"]
        async with a.get(f"/room/ops?name=Bea&speak=en&hear=es&token={token}", allow_redirects=False) as response:
            assert response.status == 307
            location = urlsplit(response.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{b_url}/room/ops"
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        assert query == {"name": "Bea", "speak": "en", "hear": "es", "token": token, "entry": a_url}

        headers = {"Origin": b_url}
        async with a.post("/api/rooms/ops/join", json=join_body("ops", "Bea"), headers=headers) as response:
            assert response.status == 421
            assert await response.json() == {
                "error": "room 'ops' lives on another media server: join it there", "node": "node-b", "url": b_url,
            }  # fmt: skip
            assert response.headers["Access-Control-Allow-Origin"] == b_url, "B's page may read A's answer"
        async with a.options("/api/rooms/ops/join", headers={**headers, "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Headers"] == "Content-Type"
        evil = {"Origin": "http://elsewhere.example"}
        async with a.post("/api/rooms/ops/join", json=join_body("ops", "Bea"), headers=evil) as response:
            assert "Access-Control-Allow-Origin" not in response.headers, "no other site's page may"

        wrong_room = {**join_body("ops", "Bea"), "token": issue_token(SECRET, "other", "Bea")}
        for http in (a, b):  # checked on every node, before anything is placed
            async with http.post("/api/rooms/ops/join", json=wrong_room) as response:
                assert response.status == 401, "a token still scopes its bearer to its room"
        b_room, a_none = 'babelroom_node_rooms{node="node-b",state="serving"} 1.0', 'node="node-a",state="serving"} 0.0'
        await metrics_show(a, b_room, a_none, 'babelroom_node_participants{node="node-b"} 1.0')
        async with b.get("/healthz") as response:
            assert (await response.json())["node"] == {"id": "node-b", "state": "serving", "url": b_url}


async def test_a_full_cluster_says_so_at_once(redis_url: str, stream_prefix: str, janus_config: JanusConfig) -> None:
    async with media_node(redis_url, stream_prefix, janus_config, "only", max_rooms=1) as (_, http):
        await metrics_show(http, live=1)
        async with http.post("/api/rooms/first/join", json=join_body("first", "Ana")) as response:
            assert response.status == 200, await response.json()
        started = time.monotonic()
        async with http.post("/api/rooms/second/join", json=join_body("second", "Bea")) as response:
            assert response.status == 503
            error = (await response.json())["error"]
        print(f"refused in {time.monotonic() - started:.3f} s: {error}")
        assert "every media node is draining or at its limit" in error
        assert time.monotonic() - started < 2.0, "a clear answer, not a hang"
        async with http.get("/room/second", allow_redirects=False) as response:
            assert response.status == 200, "the page is served; its join explains"
