"""The gateway's aiohttp application: the room page, the join API, and health.

    GET  /                        the join form (pick a room)
    GET  /room/{room}             the room page; ?name=&speak=&hear=[&token=] joins directly
    GET  /api/config              languages this deployment supports, whether tokens are required
    POST /api/rooms/{room}/join   {name, speak, hear, token?, options, sdp} -> {id, sdp, type: answer}
    POST /api/sessions/{id}/leave
    GET  /api/rooms/{room}        roster, floor and playout counters
    GET  /healthz                 workers alive per kind, backlog per stage, gateway tasks, service level
    GET  /metrics                 Prometheus: latency per stage and end to end, backlog, dead letters,
                                  degradations, drops, sessions and rooms

Every /api error is JSON: {"error": "..."} with a 4xx status. Renegotiation, captions, floor and
playout notices then travel over the participant's WebRTC data channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from gateway import validation
from gateway.health import BUS_KEY, OVERLOAD_KEY, TASKS_KEY, healthz
from gateway.options import GatewayOptions
from gateway.rooms import Profile
from gateway.service import Gateway, JoinError
from gateway.tokens import TokenClaims, TokenError, verify_token
from pipeline.bus import Bus
from pipeline.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
GATEWAY_KEY = web.AppKey("gateway", Gateway)
LANGUAGE_NAMES = {
    "en": "English", "es": "Español", "ca": "Català", "gl": "Galego", "pt": "Português",
    "fr": "Français", "de": "Deutsch", "it": "Italiano", "eu": "Euskara", "nl": "Nederlands",
}  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(bus: Bus, options: GatewayOptions | None = None) -> web.Application:
    options = options or GatewayOptions()
    # auto_decompress off: a compressed body is refused (415) rather than inflated, garbage or bomb alike.
    app = web.Application(
        client_max_size=options.client_max_size,
        middlewares=[json_errors],
        handler_args={"auto_decompress": False},
    )
    gateway = Gateway(bus, options)
    app[BUS_KEY] = bus
    app[GATEWAY_KEY] = gateway
    app[TASKS_KEY] = gateway.tasks
    app[OVERLOAD_KEY] = gateway.overload

    async def start(app: web.Application) -> None:
        await gateway.start()

    async def stop(app: web.Application) -> None:
        await gateway.stop()

    async def close_bus(app: web.Application) -> None:
        await bus.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(close_bus)
    app.router.add_get("/", index)
    app.router.add_get("/room/{room}", room_page)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/rooms/{room}/join", join)
    app.router.add_get("/api/rooms/{room}", room_state)
    app.router.add_post("/api/sessions/{session}/leave", leave)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/static/{name}", static_files(STATIC))
    return app


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API errors as JSON with a clear message, whatever raised them (aiohttp's 413 included). Anything
    unexpected is logged and answered with a JSON 500, on every path: never a traceback page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            limit = request.app[GATEWAY_KEY].options.client_max_size
            message = f"request body too large: the limit is {limit} bytes"
        return web.json_response({"error": message}, status=exc.status)
    except validation.InvalidInput as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        request.app[GATEWAY_KEY].metrics.count_http_error()
        return web.json_response({"error": "internal error (logged on the server)"}, status=500)


ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    415: web.HTTPUnsupportedMediaType,
}


def api_error(status: int, message: str) -> web.HTTPException:
    return ERRORS[status](text=json.dumps({"error": message}), content_type="application/json")


# -- pages ------------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "room.html")


async def room_page(request: web.Request) -> web.StreamResponse:
    room = request.match_info["room"]
    if not validation.ROOM_NAME.fullmatch(room):
        return web.Response(status=400, text=f"invalid room name {room!r}", content_type="text/plain")
    options = request.app[GATEWAY_KEY].options
    token = request.query.get("token", "")
    if token and options.tokens_required:
        try:
            verify_token(options.token_secret, token, room)
        except TokenError as exc:
            return web.Response(status=401, text=f"BabelRoom: cannot join {room}: {exc}", content_type="text/plain")
    return web.FileResponse(STATIC / "room.html")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format)."""
    gateway = request.app[GATEWAY_KEY]
    gateway.metrics.set_sessions(len(gateway.sessions), len(gateway.rooms))
    return web.Response(body=gateway.metrics.render(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})


def static_files(directory: Path) -> Handler:
    """The files of `directory`, by exact name: nothing else is looked up on disk (aiohttp's own static
    route answers a very long name with a 500)."""
    files = {path.name: path for path in directory.iterdir() if path.is_file()}

    async def serve(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    return serve


# -- api --------------------------------------------------------------------------------------------
async def config(request: web.Request) -> web.Response:
    options = request.app[GATEWAY_KEY].options
    languages = [{"code": code, "name": LANGUAGE_NAMES.get(code, code)} for code in options.languages]
    ice = [{"urls": url} for url in options.ice_urls]
    if ice and options.ice_username:
        ice = [{**server, "username": options.ice_username, "credential": options.ice_credential} for server in ice]
    return web.json_response({"languages": languages, "tokens_required": options.tokens_required, "ice_servers": ice})


async def join(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    room = validation.room_name(request.match_info["room"])
    body = await json_body(request)
    claims = authorize(gateway.options, room, str(body.get("token") or ""))
    profile = parse_profile(gateway.options, body, claims)
    sdp = parse_offer(body)
    try:
        participant, answer = await gateway.join(room, profile, sdp)
    except JoinError as exc:
        raise api_error(exc.status, str(exc)) from exc
    return web.json_response({"id": participant.id, "name": profile.name, "type": "answer", "sdp": answer})


async def leave(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    if not await gateway.leave(request.match_info["session"]):
        raise api_error(404, "no such session (already left?)")
    return web.json_response({"left": True})


async def room_state(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    room = gateway.rooms.get(validation.room_name(request.match_info["room"]))
    if room is None:
        raise api_error(404, "no one is in this room")
    timelines = {language: vars(t.stats) for language, t in room.timelines.items()}
    return web.json_response({"participants": room.roster(), **room.floor_state(), "playout": timelines})


# -- request parsing (the rules live in gateway/validation.py) -------------------------------------------
async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise api_error(415, "send the join request as application/json")
    validation.plain_body(request.headers.get(hdrs.CONTENT_ENCODING, ""), request.charset)
    return validation.json_object(await request.read())


def authorize(options: GatewayOptions, room: str, token: str) -> TokenClaims | None:
    if not options.tokens_required:
        return None
    try:
        return verify_token(options.token_secret, token, room)
    except TokenError as exc:
        raise api_error(401, str(exc)) from exc


def parse_profile(options: GatewayOptions, body: dict[str, Any], claims: TokenClaims | None) -> Profile:
    name = validation.display_name(claims.name if claims else body.get("name"))
    speak, hear = str(body.get("speak") or ""), str(body.get("hear") or "")
    for field, code in (("speak", speak), ("hear", hear)):
        if code not in options.languages:
            supported = ", ".join(options.languages)
            raise api_error(400, f"unknown language code {code!r} for {field!r}; this deployment supports: {supported}")
    toggles = body.get("options") or {}
    if not isinstance(toggles, dict) or not all(isinstance(value, bool) for value in toggles.values()):
        raise api_error(400, "options must be a JSON object of true/false switches")
    return Profile(
        name=name,
        speak=speak,
        hear=hear,
        role=claims.role if claims else "participant",
        hear_original=bool(toggles.get("hear_original", False)),
        lipsync=bool(toggles.get("lipsync", True)),
        consent=bool(toggles.get("consent", True)),
        match_voice=bool(toggles.get("match_voice", False)),
    )


def parse_offer(body: dict[str, Any]) -> str:
    sdp = body.get("sdp")
    if body.get("type", "offer") != "offer" or not isinstance(sdp, str):
        raise api_error(400, "an SDP offer is required: {type: 'offer', sdp: '...'}")
    if not sdp.startswith("v=0") or "\nm=" not in sdp:
        raise api_error(400, "malformed SDP offer: it must start with 'v=0' and have media sections ('m=')")
    return sdp
