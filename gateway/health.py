"""GET /healthz: the gateway is up, how many workers of each kind are alive, and each stage's backlog
(segments waiting to be read, and being processed): what an operator watches to add workers."""

from __future__ import annotations

from aiohttp import web

from pipeline.bus import Bus
from pipeline.routes import WORKER_KINDS
from workers.base import alive_workers

BUS_KEY = web.AppKey("bus", Bus)


async def healthz(request: web.Request) -> web.Response:
    bus = request.app[BUS_KEY]
    try:
        counts = await alive_workers(bus)
        backlog = {kind: await bus.backlog(kind, kind) for kind in WORKER_KINDS}
    except Exception as exc:  # Redis down: say so, with 503, rather than fail opaquely
        return web.json_response({"status": "redis unavailable", "error": str(exc)}, status=503)
    workers = {kind: counts.get(kind, 0) for kind in (*WORKER_KINDS, *sorted(set(counts) - set(WORKER_KINDS)))}
    ready = all(workers[kind] > 0 for kind in WORKER_KINDS)
    return web.json_response({"status": "ok" if ready else "degraded", "workers": workers, "backlog": backlog})
