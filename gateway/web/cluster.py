"""The HTTP side of a media node (gateway/rooms/placement.py holds the registry and placement).

- A page request for a room that lives on another node is redirected there (307), keeping its query (the token
  with it) and adding `entry`, the address the person opened, through which the page rejoins if that node dies.
- A join that reaches the wrong node is answered 421 with the room's node and its URL; the page joins there and
  then talks to that node only. A join no node can take (every one draining or at its limit) is answered 503 at
  once, with why.
- The join API answers pages served by the other nodes (CORS, for their origins and BABELROOM_CLUSTER_URL's only):
  a page whose node died rejoins through another node without reloading, keeping its camera and microphone.
- SIGTERM drains the node (gateway/web/serve.py); a clean stop releases its rooms first.

Tokens and TURN credentials need nothing here: every node holds the same secrets and checks them itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import hdrs, web
from redis.exceptions import RedisError

from gateway.options import GatewayOptions
from gateway.rooms.placement import Node, NodeCounts, NoNodeFree
from gateway.service import Gateway
from gateway.web.serve import DRAIN_KEY
from pipeline.bus import Bus
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

NODE_KEY = web.AppKey("node", Node)
JOIN_PATH = "/api/rooms/{room}/join"
PREFLIGHT_MAX_AGE_S = 600


def install(app: web.Application, gateway: Gateway, bus: Bus, options: GatewayOptions) -> None:
    """Make this gateway a media node, when it has a node id (`babelroom node`, `babelroom up`)."""
    if not options.node.id:
        return

    def counts() -> NodeCounts:
        return NodeCounts(rooms=tuple(gateway.rooms), participants=len(gateway.sessions))

    async def send_away(rooms: Sequence[str], reason: str) -> None:
        for participant in [p for p in gateway.sessions.values() if p.room in rooms]:
            await gateway.leave(participant.id, reason)

    node = Node(bus, options.node, counts, send_away)
    app[NODE_KEY] = node
    app[DRAIN_KEY] = node.drain_and_wait

    async def start(app: web.Application) -> None:
        gateway.tasks.supervise("node", node.run)

    async def stop(app: web.Application) -> None:
        try:
            await node.stop()
        except RedisError as exc:
            log.warning(
                "could not release node %s's rooms (%s): they are placed again once it counts as dead", node.id, exc
            )

    app.on_startup.append(start)
    app.on_shutdown.insert(0, stop)  # before the gateway ends the sessions: the pages' rejoins find other nodes
    app.on_response_prepare.append(allow_other_nodes)
    app.router.add_route("OPTIONS", JOIN_PATH, preflight)


async def admit_join(request: web.Request, room: str) -> dict[str, Any]:
    """What a join answer says of the cluster (this node, the others); raises 421 for a room that lives on another
    node, 503 when no node can take a new room. Without Redis the join is admitted here: media works meanwhile."""
    node = request.app.get(NODE_KEY)
    if node is None:
        return {}
    try:
        placement = await node.place(room)
    except NoNodeFree as exc:
        raise json_error(web.HTTPServiceUnavailable, f"{exc}. Try again in a few minutes.") from exc
    except RedisError as exc:
        log.warning("could not place room %s (%s): admitting the join here", room, exc)
        return {"node": {"id": node.id, "url": node.options.url}, "peers": []}
    if placement.node != node.id:
        raise json_error(
            web.HTTPMisdirectedRequest,
            f"room {room!r} lives on another media server: join it there",
            node=placement.node,
            url=placement.url,
        )
    peers = [url for peer, url in node.peers.items() if peer != node.id and url]
    return {"node": {"id": node.id, "url": node.options.url}, "peers": peers, "cluster_url": node.options.cluster_url}


async def page_elsewhere(request: web.Request, room: str) -> None:
    """Redirect a page request for a room that lives on another node (307): same path and query, plus `entry`."""
    node = request.app.get(NODE_KEY)
    if node is None:
        return
    try:
        placement = await node.place(room)
    except (NoNodeFree, RedisError):
        return  # the page is served here; its join says what is wrong
    if placement.node == node.id or not placement.url:
        return
    query = dict(request.query)
    query.setdefault("entry", entry_address(request))
    raise web.HTTPTemporaryRedirect(f"{placement.url}/room/{quote(room)}?{urlencode(query)}")


def entry_address(request: web.Request) -> str:
    """The address the person opened (the scheme a TLS proxy in front says it served)."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    return f"{scheme}://{request.host}"


def json_error(kind: type[web.HTTPException], message: str, **extra: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message, **extra}), content_type="application/json")


# -- other nodes' pages: CORS on the join API -------------------------------------------------------------
async def allowed_origin(request: web.Request) -> str | None:
    """The request's Origin when it is another node's (or the cluster URL's): they may call the join API. An origin
    not among the nodes known at the last sweep is looked up in the registry (a node that has just started)."""
    node = request.app.get(NODE_KEY)
    origin = request.headers.get(hdrs.ORIGIN, "")
    if node is None or not origin:
        return None
    for fresh in (False, True):
        if fresh:
            try:
                node.peers = {report.id: report.url for report in await node.registry.nodes()}
            except RedisError:
                return None
        known = {origin_of(url) for url in (*node.peers.values(), node.options.cluster_url, node.options.url) if url}
        if origin in known:
            return origin
    return None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def allow_other_nodes(request: web.Request, response: web.StreamResponse) -> None:
    if (
        request.method in ("POST", "OPTIONS")
        and request.path.startswith("/api/rooms/")
        and request.path.endswith("/join")
    ):
        origin = await allowed_origin(request)
        if origin:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.VARY] = "Origin"


async def preflight(request: web.Request) -> web.Response:
    headers = {}
    if await allowed_origin(request):
        headers = {
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "POST",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Content-Type",
            hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_S),
        }
    return web.Response(status=204, headers=headers)


# -- what /metrics and /healthz say -------------------------------------------------------------------------
async def report_nodes(app: web.Application, metrics: Metrics) -> None:
    """Every node the registry holds, into this gateway's metrics (left as they were when Redis is away)."""
    node = app.get(NODE_KEY)
    if node is None:
        return
    try:
        reports = await node.registry.nodes()
    except RedisError:
        return
    metrics.set_nodes([report.public() for report in reports])


def node_health(app: web.Application) -> dict[str, Any]:
    node = app.get(NODE_KEY)
    return {"node": {"id": node.id, "state": node.state.value, "url": node.options.url}} if node else {}
