"""The gateway's aiohttp application."""

from __future__ import annotations

from aiohttp import web

from gateway.health import BUS_KEY, healthz
from pipeline.bus import Bus


async def index(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>BabelRoom</title><h1>BabelRoom</h1>", content_type="text/html")


def create_app(bus: Bus) -> web.Application:
    app = web.Application()
    app[BUS_KEY] = bus

    async def close_bus(app: web.Application) -> None:
        await bus.close()

    app.on_cleanup.append(close_bus)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    return app
