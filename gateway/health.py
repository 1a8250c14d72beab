"""GET /healthz: the gateway is up, whether Janus is connected, how many workers of each kind are alive,
and each stage's backlog (segments waiting to be read, and being processed): what an operator watches.

"ok" needs Janus and at least one worker of every kind; otherwise "degraded" (still 200: the gateway
itself answers), or 503 when Redis is unreachable."""

from __future__ import annotations

from aiohttp import web

from gateway.service import Gateway
from pipeline.bus import Bus
from pipeline.routes import WORKER_KINDS
from workers.base import alive_workers

BUS_KEY = web.AppKey("bus", Bus)
GATEWAY_KEY = web.AppKey("gateway", Gateway)


async def healthz(request: web.Request) -> web.Response:
    bus = request.app[BUS_KEY]
    gateway = request.app[GATEWAY_KEY]
    janus = "connected" if gateway.janus_ready.is_set() else "unavailable"
    try:
        counts = await alive_workers(bus)
        backlog = {kind: await bus.backlog(kind, kind) for kind in WORKER_KINDS}
    except Exception as exc:  # Redis down: say so, with 503, rather than fail opaquely
        return web.json_response({"status": "redis unavailable", "janus": janus, "error": str(exc)}, status=503)
    workers = {kind: counts.get(kind, 0) for kind in (*WORKER_KINDS, *sorted(set(counts) - set(WORKER_KINDS)))}
    ready = all(workers[kind] > 0 for kind in WORKER_KINDS) and gateway.janus_ready.is_set()
    rooms = {"rooms": len(gateway.rooms), "participants": len(gateway.sessions)}
    return web.json_response(
        {"status": "ok" if ready else "degraded", "janus": janus, "workers": workers, "backlog": backlog, **rooms}
    )
