"""`babelroom health`: the healthchecks of compose.yaml's containers. Each check returns None when the part is
ready, or the reason it is not; the command exits 0 or 1 with that line, as a container healthcheck expects.

- gateway: /healthz answers 200 and says Janus is connected (workers come and go: /healthz reports them); it
  sends BABELROOM_MONITORING_TOKEN as a bearer token when one is set;
- janus: its WebSocket API answers a ping (Janus answers pings without its API secret);
- worker: a worker on this host (in a container: this container) has a live heartbeat. A worker starts its
  heartbeat only once its model is loaded, so a worker still loading is not ready.
"""

from __future__ import annotations

import json
import secrets

import aiohttp
from redis.exceptions import RedisError

from pipeline.bus import Bus

TIMEOUT_S = 5.0
JANUS_PROTOCOL = "janus-protocol"


async def gateway_problem(url: str, timeout_s: float = TIMEOUT_S, token: str = "") -> str | None:
    """`token`: the monitoring bearer token, where the gateway asks for one (BABELROOM_MONITORING_TOKEN)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(url, headers=headers) as reply,
        ):
            status, text = reply.status, await reply.text()
        janus = json.loads(text).get("janus") if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        return f"{url}: {exc or type(exc).__name__}"
    if status != 200:
        return f"{url}: HTTP {status} {text[:200]}"
    return None if janus == "connected" else f"{url}: Janus is {janus}"


async def janus_problem(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    transaction = secrets.token_hex(6)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.ws_connect(url, protocols=(JANUS_PROTOCOL,)) as socket,
        ):
            await socket.send_str(json.dumps({"janus": "ping", "transaction": transaction}))
            reply = json.loads(await socket.receive_str(timeout=timeout_s))
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
        return f"{url}: {exc or type(exc).__name__}"
    if reply.get("janus") != "pong" or reply.get("transaction") != transaction:
        return f"{url}: answered {reply} to a ping"
    return None


async def worker_problem(bus: Bus, host: str, kind: str | None) -> str | None:
    """None when a worker (of `kind`, or of any kind) whose consumer name is this host's has a heartbeat."""
    try:
        async for _ in bus.client.scan_iter(match=bus.key("hb", kind or "*", f"{host}-*"), count=500):
            return None
    except RedisError as exc:
        return f"Redis: {exc}"
    return f"no {kind or 'worker'} on {host} has a heartbeat yet (loading its model, or not running)"
