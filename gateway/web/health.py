"""GET /healthz: the gateway is up, whether Janus is connected, how many workers of each kind are alive,
each stage's backlog (segments waiting to be read, and being processed), the gateway's own tasks and
the overload policy's service level: what an operator watches to add workers. `status` is "ok" only
when nothing is wrong; otherwise "degraded" with the reasons (still 200: the gateway itself answers),
or 503 when Redis is unreachable."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.rooms.overload import Level
from gateway.service import Gateway
from gateway.web.cluster import node_health
from pipeline.bus import Bus
from pipeline.routes import WORKER_KINDS

BUS_KEY = web.AppKey("bus", Bus)
GATEWAY_KEY = web.AppKey("gateway", Gateway)


async def healthz(request: web.Request) -> web.Response:
    bus = request.app[BUS_KEY]
    gateway = request.app[GATEWAY_KEY]
    janus = "connected" if gateway.janus_ready.is_set() else "unavailable"
    try:
        counts = await bus.alive_workers()
        backlog = {kind: await bus.backlog(kind, kind) for kind in WORKER_KINDS}
    except Exception as exc:  # Redis down: say so, with 503, rather than fail opaquely
        return web.json_response({"status": "redis unavailable", "janus": janus, "error": str(exc)}, status=503)
    workers = {kind: counts.get(kind, 0) for kind in (*WORKER_KINDS, *sorted(set(counts) - set(WORKER_KINDS)))}
    reasons = [f"no {kind} worker alive" for kind in WORKER_KINDS if workers[kind] == 0]
    if janus != "connected":
        reasons.append("Janus (the media server) is not connected")
    if not gateway.tasks.healthy:
        reasons.append("a gateway task failed and was restarted recently")
    service = gateway.overload.last
    if service.level > Level.FULL:
        reasons.append(f"overloaded: service level {service.level.label}")
    body: dict[str, Any] = {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "janus": janus,
        "workers": workers,
        "backlog": backlog,
        "tasks": gateway.tasks.status(),
        "service": service.public(),
        "video": gateway.video_counts(),
        "echo": vars(gateway.ingest.echo.stats),
        "rooms": len(gateway.rooms),
        "participants": len(gateway.sessions),
        **node_health(request.app),
    }
    return web.json_response(body)
