"""The gateway's aiohttp application: the room page, the join API, the participant's two sockets, health.

    GET  /                               the join form (pick a room)
    GET  /room/{room}                    the room page; ?name=&speak=&hear=[&token=] joins directly
    GET  /api/config                     languages, whether tokens are required, STUN servers, HTTPS port, features
    POST /api/rooms/{room}/join          {name, speak, hear, token?, options} -> {id, ticket, room_id, feed_id,
                                         ice_servers (TURN with this join's own short-lived credential), ...}
    GET  /api/sessions/{id}/events       WebSocket (?ticket=): captions, roster, floor, playout; mute/floor/leave back
                                         (and a host's remove/end: gateway/rooms/commands.py)
    GET  /api/sessions/{id}/janus        WebSocket (?ticket=), protocol janus-protocol: janus.js through the proxy
    POST /api/sessions/{id}/leave        (?ticket=)
    GET  /api/rooms/{room}               roster, floor and playout counters (open rooms, or ?token=)
    GET  /api/rooms/{room}/transcript    ?lang=xx|all&format=vtt|srt|txt, with ?session=&ticket= (a participant
                                         of the room) or ?token= (one for the room): the meeting's transcript
    GET  /healthz                        Janus, workers alive per kind, backlog per stage, gateway tasks, service level
    GET  /metrics                        Prometheus: latency per stage and end to end, backlog, dead letters,
                                         degradations, drops, sessions and rooms
    GET  /static/vendor/janus.js, adapter.js   Debian's janus.js and webrtc-adapter: no CDN

Every /api error is JSON: {"error": "..."} with a 4xx status (503 while the media server is away). Joins and
failed token checks are limited per client address (429 with Retry-After), and /healthz and /metrics may be
kept to loopback or a bearer token: gateway/web/guard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from redis.exceptions import RedisError

from gateway import validation
from gateway.options import GatewayOptions
from gateway.rooms.room import Admission, Participant, Profile
from gateway.rooms.transcript import ALL, FORMATS
from gateway.service import Gateway, JoinError
from gateway.web import cluster
from gateway.web.guard import guard
from gateway.web.health import BUS_KEY, GATEWAY_KEY, healthz
from gateway.web.proxy import MAX_FRAME_BYTES, PROXIES_KEY, Grant, MediaEvents, Proxies, Refused, relay
from gateway.web.tokens import TokenClaims, TokenError, token_digest, verify_token
from gateway.web.turn import turn_credential
from pipeline.bus import Bus
from pipeline.metrics import CONTENT_TYPE
from pipeline.routes import LIPSYNC

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# janus.js and its WebRTC adapter come from Debian (libjs-janus-gateway, libjs-webrtc-adapter).
VENDOR = {
    "janus.js": Path("/usr/share/javascript/janus-gateway/janus.js"),
    "adapter.js": Path("/usr/share/javascript/webrtc-adapter/adapter.js"),
}
LANGUAGE_NAMES = {
    "en": "English", "es": "Español", "ca": "Català", "gl": "Galego", "pt": "Português",
    "fr": "Français", "de": "Deutsch", "it": "Italiano", "eu": "Euskara", "nl": "Nederlands",
}  # fmt: skip
SOCKET_HEARTBEAT_S = 20.0
# No permessage-deflate: aiohttp's parse of its offer calls int() on a client's digits unbounded (a 500), and
# the frames are small JSON that would cost CPU to inflate for little gain.
SOCKET_COMPRESSION = False
LOGGED_REQUEST_CHARS = 120  # of a refused request's own words: an over-long line quotes kilobytes of itself

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RefusedRequestLog(logging.Filter):
    """aiohttp logs a request it cannot parse (an over-long or malformed line, which the client gets a 400 for)
    as an ERROR with a traceback. The fault is the client's, not the service's: one WARNING line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            refusal = f"{type(error).__name__}: {error.message}"[:LOGGED_REQUEST_CHARS]
            record.msg, record.args = "%s, answered 400 (%s)", (record.getMessage(), refusal)
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.exc_info = record.exc_text = None
        return True


def log_refused_requests_as_warnings() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RefusedRequestLog) for f in server_log.filters):
        server_log.addFilter(RefusedRequestLog())


def create_app(bus: Bus, options: GatewayOptions | None = None) -> web.Application:
    options = options or GatewayOptions()
    log_refused_requests_as_warnings()
    # auto_decompress off: a compressed body is refused (415) rather than inflated, garbage or bomb alike.
    app = web.Application(
        client_max_size=options.client_max_size,
        middlewares=[guard(options.limits, options.monitoring), json_errors],
        handler_args={"auto_decompress": False},
    )
    gateway = Gateway(bus, options)
    app[BUS_KEY] = bus
    app[GATEWAY_KEY] = gateway
    app[PROXIES_KEY] = Proxies(options.proxy)

    async def start(app: web.Application) -> None:
        await gateway.start()

    async def stop(app: web.Application) -> None:
        await gateway.stop()

    async def close_bus(app: web.Application) -> None:
        await bus.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(close_bus)
    cluster.install(app, gateway, bus, options)  # a media node: placement, redirects, draining
    app.router.add_get("/", index)
    app.router.add_get("/room/{room}", room_page)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/rooms/{room}/join", join)
    app.router.add_get("/api/rooms/{room}", room_state)
    app.router.add_get("/api/rooms/{room}/transcript", transcript)
    app.router.add_get("/api/sessions/{session}/events", events_socket)
    app.router.add_get("/api/sessions/{session}/janus", janus_socket)
    app.router.add_post("/api/sessions/{session}/leave", leave)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/static/vendor/{name}", vendor)
    app.router.add_get("/static/{name}", static_files(STATIC))
    return app


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API errors as JSON with a clear message, whatever raised them (aiohttp's 413 included). Anything
    unexpected is logged and answered with a JSON 500, on every path: never a traceback page."""
    try:
        return await handler(request)
    except validation.InvalidInput as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            limit = request.app[GATEWAY_KEY].options.client_max_size
            message = f"request body too large: the limit is {limit} bytes"
        return web.json_response({"error": message}, status=exc.status)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        request.app[GATEWAY_KEY].metrics.count_http_error()
        return web.json_response({"error": "internal error (logged on the server)"}, status=500)


ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    415: web.HTTPUnsupportedMediaType,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


def api_error(status: int, message: str) -> web.HTTPException:
    return ERRORS[status](text=json.dumps({"error": message}), content_type="application/json")


# -- pages ------------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "room.html")


async def room_page(request: web.Request) -> web.StreamResponse:
    room = request.match_info["room"]
    if not validation.ROOM_NAME.fullmatch(room):
        rule = validation.ROOM_NAME_RULE
        return error_page(400, "This is not a room name", f"{room!r} cannot name a room. A room name has {rule}.")
    options = request.app[GATEWAY_KEY].options
    token = request.query.get("token", "")
    if token and options.tokens_required:
        try:
            verify_token(options.token_secret, token, room)
        except TokenError as exc:
            return error_page(401, f"You cannot join {room}", f"{exc}.")
    await cluster.page_elsewhere(request, room)  # a room that lives on another node: redirected there
    return web.FileResponse(STATIC / "room.html")


def error_page(status: int, title: str, detail: str) -> web.Response:
    body = (STATIC / "error.html").read_text()
    body = body.replace("{title}", html.escape(title)).replace("{detail}", html.escape(detail))
    return web.Response(status=status, text=body, content_type="text/html")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format)."""
    gateway = request.app[GATEWAY_KEY]
    gateway.metrics.set_sessions(len(gateway.sessions), len(gateway.rooms))
    gateway.metrics.set_video(gateway.video_counts())
    gateway.metrics.set_echo(vars(gateway.ingest.echo.stats))
    await cluster.report_nodes(request.app, gateway.metrics)
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


async def vendor(request: web.Request) -> web.StreamResponse:
    path = VENDOR.get(request.match_info["name"])
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text="not found (janus.js comes from Debian: apt-get install libjs-janus-gateway)")
    return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})


# -- api --------------------------------------------------------------------------------------------
async def config(request: web.Request) -> web.Response:
    options = request.app[GATEWAY_KEY].options
    languages = [{"code": code, "name": LANGUAGE_NAMES.get(code, code)} for code in options.languages]
    return web.json_response(
        {
            "languages": languages,
            "tokens_required": options.tokens_required,
            "ice_servers": stun_servers(options),
            "https_port": options.tls.port if options.tls.enabled else None,
            "features": {"lipsync": await lipsync_available(request.app[BUS_KEY])},
            "cluster_url": options.node.cluster_url or None,
        }
    )


async def lipsync_available(bus: Bus) -> bool:
    """Lip-sync is offered while a lipsync worker is alive; without Redis, it is not."""
    try:
        return (await bus.alive_workers()).get(LIPSYNC, 0) > 0
    except (RedisError, OSError):
        return False


def stun_servers(options: GatewayOptions) -> list[dict[str, Any]]:
    return [{"urls": url} for url in options.ice_urls]


def ice_servers(options: GatewayOptions, participant: Participant, claims: TokenClaims | None) -> list[dict[str, Any]]:
    """STUN servers, and the TURN server with a credential of this join's own that ends with its token."""
    servers = stun_servers(options)
    turn = options.turn
    if turn.enabled:
        expires_at = claims.expires_at if claims else time.time() + turn.ttl_s
        credential = turn_credential(turn.secret, participant.id, expires_at)
        servers.append({"urls": list(turn.urls), "username": credential.username, "credential": credential.password})
    return servers


async def join(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    room = validation.room_name(request.match_info["room"])
    body = await json_body(request)
    raw_token = body.get("token")
    token = raw_token if isinstance(raw_token, str) else ""
    claims = authorize(gateway.options, room, token)
    profile = parse_profile(gateway.options, body, claims)
    admission = Admission(token_digest(token), claims.expires_at) if claims else Admission()
    cluster_info = await cluster.admit_join(request, room)  # 421 with the room's node when it lives elsewhere
    try:
        participant = await gateway.join(room, profile, admission)
    except JoinError as exc:
        raise api_error(exc.status, str(exc)) from exc
    base = f"/api/sessions/{participant.id}"
    return web.json_response(
        {
            "id": participant.id,
            "ticket": participant.ticket,
            "name": profile.name,
            "room": room,
            "room_id": gateway.rooms[room].keys.room_id,
            "feed_id": participant.feed_id,
            "events": f"{base}/events",
            "janus": f"{base}/janus",
            "ice_servers": ice_servers(gateway.options, participant, claims),
            **cluster_info,
        }
    )


def session(request: web.Request) -> Participant:
    gateway = request.app[GATEWAY_KEY]
    try:
        return gateway.authenticate(request.match_info["session"], request.query.get("ticket", ""))
    except JoinError as exc:
        raise api_error(exc.status, str(exc)) from exc


async def leave(request: web.Request) -> web.Response:
    participant = session(request)
    await request.app[GATEWAY_KEY].leave(participant.id, "the session was ended by a leave request")
    return web.json_response({"left": True})


async def events_socket(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    participant = session(request)
    socket = web.WebSocketResponse(
        heartbeat=SOCKET_HEARTBEAT_S, max_msg_size=gateway.options.client_max_size, compress=SOCKET_COMPRESSION
    )
    await socket.prepare(request)
    participant.socket_opened()
    await gateway.attach_events(participant, socket)
    pump = asyncio.create_task(_pump_events(participant, socket))
    try:
        async for frame in socket:
            if frame.type is WSMsgType.TEXT:
                await gateway.on_client_message(participant, frame.data)
    finally:
        pump.cancel()
        gateway.detach_events(participant, socket)
        participant.socket_closed()
    return socket


async def _pump_events(participant: Participant, socket: web.WebSocketResponse) -> None:
    while not socket.closed:
        text = await participant.outbox.get()
        try:
            await socket.send_str(text)
        except (ConnectionError, RuntimeError):
            with contextlib.suppress(asyncio.QueueFull):  # keep it for the next socket
                participant.outbox.put_nowait(text)
            return


async def janus_socket(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    participant = session(request)
    room = gateway.rooms.get(participant.room)
    if room is None or not gateway.janus_ready.is_set():
        raise api_error(503, "the media server is not available right now; rejoin in a moment")
    socket = web.WebSocketResponse(
        protocols=("janus-protocol",),
        heartbeat=SOCKET_HEARTBEAT_S,
        max_msg_size=MAX_FRAME_BYTES,
        compress=SOCKET_COMPRESSION,
    )
    keys, name = room.keys, participant.profile.name
    grant = Grant(keys.room_id, keys.pin, participant.feed_id, name, room.feed_ids, participant.access)
    proxies = request.app[PROXIES_KEY]
    try:  # limits count per participant, across all of their media sockets
        vetting = proxies.connect(participant.id, grant)
    except Refused as exc:
        raise api_error(429, str(exc)) from exc
    try:
        await socket.prepare(request)
        participant.socket_opened()
        janus = gateway.options.janus
        events = MediaEvents(
            lambda streams: gateway.published(participant, streams), lambda: gateway.media_up(participant)
        )
        await relay(socket, janus.url, janus.api_secret, vetting, events)
    except (OSError, ConnectionError) as exc:
        log.warning("media socket of %s ended: %s", participant.profile.name, exc)
    finally:
        proxies.disconnect(participant.id, vetting)
        if socket.prepared:
            participant.socket_closed()
            await socket.close()
    return socket


async def room_state(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    name = validation.room_name(request.match_info["room"])
    authorize(gateway.options, name, request.query.get("token", ""))
    room = gateway.rooms.get(name)
    if room is None:
        raise api_error(404, "no one is in this room")
    timelines = {language: vars(t.stats) for language, t in room.timelines.items()}
    return web.json_response({"participants": room.roster(), **room.floor_state(), "playout": timelines})


async def transcript(request: web.Request) -> web.Response:
    """The meeting's transcript as a file (gateway/rooms/transcript.py), for the room's own people only."""
    gateway = request.app[GATEWAY_KEY]
    room = validation.room_name(request.match_info["room"])
    may_read_room(request, gateway, room)
    lang, fmt = request.query.get("lang", ALL), request.query.get("format", "vtt")
    if lang != ALL and lang not in gateway.options.languages:
        raise api_error(400, f"unknown language {lang!r}: use all or one of {', '.join(gateway.options.languages)}")
    if fmt not in FORMATS:
        raise api_error(400, f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    try:
        export = await gateway.transcripts.export(room, lang, fmt)
    except RedisError as exc:
        raise api_error(503, "the transcript store is not available right now; try again in a moment") from exc
    if export is None:
        raise api_error(404, "this room has no transcript: it was never turned on, or its retention has ended")
    headers: dict[str, str] = {hdrs.CONTENT_DISPOSITION: f'attachment; filename="{export.filename}"'}
    if export.full:
        headers["X-Transcript-Full"] = "the transcript reached its size limit: later words are not in it"
    return web.Response(text=export.body, content_type=export.content_type, charset="utf-8", headers=headers)


def may_read_room(request: web.Request, gateway: Gateway, room: str) -> None:
    """A participant of `room` (?session=&ticket=) or the bearer of a token for it, in open rooms too: nobody
    else, and never someone of another room. 401 without valid credentials, 403 for another room's session."""
    session_id = request.query.get("session")
    if session_id is not None:
        try:
            participant = gateway.authenticate(session_id, request.query.get("ticket", ""))
        except JoinError as exc:
            raise api_error(exc.status, str(exc)) from exc
        if participant.room != room:
            raise api_error(403, "this session belongs to another room")
        return
    try:
        verify_token(gateway.options.token_secret, request.query.get("token", ""), room)
    except TokenError as exc:
        raise api_error(401, f"{exc} (or give your session and ticket)") from exc


# -- request parsing (the rules live in gateway/validation.py) -------------------------------------------
async def json_body(request: web.Request) -> dict[str, Any]:
    # Not request.content_type: aiohttp parses it with the email package, quadratic on some headers.
    charset = validation.json_content_type(request.headers.get(hdrs.CONTENT_TYPE, ""))
    validation.plain_body(request.headers.get(hdrs.CONTENT_ENCODING, ""), charset)
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
    speak, hear = body.get("speak"), body.get("hear")
    for field, code in (("speak", speak), ("hear", hear)):
        if code not in options.languages:
            supported = ", ".join(options.languages)
            raise api_error(400, f"unknown language code {code!r} for {field!r}; this deployment supports: {supported}")
    toggles = body.get("options") or {}
    if not isinstance(toggles, dict) or not all(isinstance(value, bool) for value in toggles.values()):
        raise api_error(400, "options must be a JSON object of true/false switches")
    return Profile(
        name=name,
        speak=str(speak),
        hear=str(hear),
        role=claims.role if claims else "participant",
        hear_original=toggles.get("hear_original") is True,
        lipsync=toggles.get("lipsync") is True,
        consent=toggles.get("consent", True) is True,
        face_consent=toggles.get("face_consent") is True,
        match_voice=toggles.get("match_voice") is True,
    )
