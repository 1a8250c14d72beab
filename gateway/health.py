"""GET /healthz: the gateway is up, how many workers of each kind are alive, each stage's backlog
(segments waiting to be read, and being processed), the gateway's own tasks, and the overload policy's
service level: what an operator watches to add workers. `status` is "ok" only when nothing is wrong;
otherwise "degraded" with the reasons."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.overload import Level, OverloadMonitor
from gateway.tasks import TaskSupervisor
from pipeline.bus import Bus
from pipeline.routes import WORKER_KINDS

BUS_KEY = web.AppKey("bus", Bus)
TASKS_KEY = web.AppKey("tasks", TaskSupervisor)
OVERLOAD_KEY = web.AppKey("overload", OverloadMonitor)


async def healthz(request: web.Request) -> web.Response:
    bus = request.app[BUS_KEY]
    try:
        counts = await bus.alive_workers()
        backlog = {kind: await bus.backlog(kind, kind) for kind in WORKER_KINDS}
    except Exception as exc:  # Redis down: say so, with 503, rather than fail opaquely
        return web.json_response({"status": "redis unavailable", "error": str(exc)}, status=503)
    workers = {kind: counts.get(kind, 0) for kind in (*WORKER_KINDS, *sorted(set(counts) - set(WORKER_KINDS)))}
    reasons = [f"no {kind} worker alive" for kind in WORKER_KINDS if workers[kind] == 0]
    body: dict[str, Any] = {"workers": workers, "backlog": backlog}
    tasks = request.app.get(TASKS_KEY)
    if tasks is not None:
        body["tasks"] = tasks.status()
        if not tasks.healthy:
            reasons.append("a gateway task failed and was restarted recently")
    overload = request.app.get(OVERLOAD_KEY)
    if overload is not None:
        body["service"] = overload.last.public()
        if overload.last.level > Level.FULL:
            reasons.append(f"overloaded: service level {overload.last.level.label}")
    return web.json_response({"status": "degraded" if reasons else "ok", "reasons": reasons, **body})
