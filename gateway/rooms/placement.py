"""Media nodes and where each room lives, in the shared Redis (LiveKit's distributed mode, for Janus).

A media node is one gateway with its own Janus. Two hashes hold the cluster:

    {prefix}:cluster:nodes   node id -> its last report (JSON): URL, state, rooms, participants, load, limits, `at`
    {prefix}:cluster:rooms   room    -> "NODE PLACED_MS [open]": the node the room lives on

Each node reports every `report_s`; one that has not for `live_s` is dead. Times are Redis's own clock (TIME in the
scripts), so hosts whose clocks disagree still agree on who is live. Every step is one Lua script, hence atomic:
- place: a room on a live node stays there (a draining one too: later joins go where the room is); a new room, or
  one whose node is dead, goes to the live serving node with the fewest rooms under its limits (on a tie: the node
  asked, which saves a redirect, then the least loaded).
  Two first joins through two nodes at once run one after the other in Redis and agree; the count the next one
  sees already holds the first, so a burst spreads rather than herding onto one node. No lock is needed beside
  it: the script is the lock.
- report: the node's state and counters; its open rooms are marked open (and claimed again if their entry was
  lost); the rooms it holds that now live elsewhere (its report came late, and a join placed them again) come back,
  and the node sends their participants to rejoin there.
- sweep: a room whose node left the registry is forgotten; one this node closed is released at once; one placed
  here but never opened (the person never came) after PLACED_HOLD_S. A node dead for the retention is forgotten
  once its results stream has emptied and gone (each sweep trims every known node's `results:NODE`).

A draining node (SIGTERM, or `babelroom drain`) takes no new room; once its grace has passed it releases its rooms
and sends their participants to rejoin elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.exceptions import RedisError

from gateway.options import NodeOptions
from pipeline.bus import Bus
from pipeline.routes import RESULTS, results_stream

log = logging.getLogger(__name__)

# A room placed on a node that never opens it (the page was redirected, nobody joined) is released after this.
PLACED_HOLD_S = 30.0
# A node's load is its process's CPU time over this many seconds of wall time; 0 until it has measured one second
# (a process that has just started has spent its first moments importing, not serving).
LOAD_WINDOW_S = 5.0
LOAD_MIN_SPAN_S = 1.0


class NodeState(StrEnum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"  # stopped cleanly: its rooms were released, and it takes none
    DEAD = "dead"  # only in what the registry shows: a node that stopped reporting


_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: nodes, rooms. ARGV: room, live_ms, the asking node. Returns {node, url, placed (1: new)}; node '' when no node
# can take it.
_PLACE = (
    _NOW
    + """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current then
  local node = string.match(current, '^(%S+)')
  local raw = redis.call('HGET', KEYS[1], node)
  if raw then
    local info = cjson.decode(raw)
    if now - info.at <= tonumber(ARGV[2]) and info.state ~= 'stopped' then return {node, info.url, 0} end
  end
end
local assigned = {}
local rooms = redis.call('HGETALL', KEYS[2])
for i = 2, #rooms, 2 do
  local node = string.match(rooms[i], '^(%S+)')
  assigned[node] = (assigned[node] or 0) + 1
end
local best, best_rooms, best_load, best_url
local nodes = redis.call('HGETALL', KEYS[1])
for i = 1, #nodes, 2 do
  local id, info = nodes[i], cjson.decode(nodes[i + 1])
  local count = assigned[id] or 0
  local open = info.max_rooms == 0 or count < info.max_rooms
  local cool = info.max_load == 0 or info.load < info.max_load
  if now - info.at <= tonumber(ARGV[2]) and info.state == 'serving' and open and cool then
    local better = best == nil or count < best_rooms
    if not better and count == best_rooms and best ~= ARGV[3] then  -- a tie: the asking node, then the less loaded
      better = id == ARGV[3] or info.load < best_load or (info.load == best_load and id < best)
    end
    if better then
      best, best_rooms, best_load, best_url = id, count, info.load, info.url
    end
  end
end
if best == nil then return {'', '', 0} end
redis.call('HSET', KEYS[2], ARGV[1], best .. ' ' .. now)
return {best, best_url, 1}
"""
)

# KEYS: nodes, rooms. ARGV: node id, its report (JSON, without `at`), then its open rooms.
# Returns {state, rooms of this node that live elsewhere now...}.
_REPORT = (
    _NOW
    + """
local report = cjson.decode(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  old = cjson.decode(old)
  if old.instance == report.instance and old.state == 'draining' and report.state == 'serving' then
    report.state = 'draining'
  end
end
report.at = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(report))
local moved = {report.state}
for i = 3, #ARGV do
  local entry = redis.call('HGET', KEYS[2], ARGV[i])
  if not entry then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1] .. ' ' .. now .. ' open')
  else
    local node, placed, open = string.match(entry, '^(%S+) (%d+) ?(%a*)$')
    if node ~= ARGV[1] then
      table.insert(moved, ARGV[i])
    elseif open ~= 'open' then
      redis.call('HSET', KEYS[2], ARGV[i], node .. ' ' .. placed .. ' open')
    end
  end
end
return moved
"""
)

# KEYS: nodes, rooms. ARGV: this node's id, forget_ms (a node dead this long goes), hold_ms, the results stream key
# prefix, then this node's open rooms. Returns the known nodes as id, url pairs (the ones forgotten now excluded).
_SWEEP = (
    _NOW
    + """
local here = {}
for i = 5, #ARGV do here[ARGV[i]] = true end
local known, out = {}, {}
local nodes = redis.call('HGETALL', KEYS[1])
for i = 1, #nodes, 2 do
  local id, info = nodes[i], cjson.decode(nodes[i + 1])
  if now - info.at > tonumber(ARGV[2]) and redis.call('EXISTS', ARGV[4] .. id) == 0 then
    redis.call('HDEL', KEYS[1], id)
  else
    known[id] = true
    table.insert(out, id)
    table.insert(out, info.url)
  end
end
local rooms = redis.call('HGETALL', KEYS[2])
for i = 1, #rooms, 2 do
  local node, placed, open = string.match(rooms[i + 1], '^(%S+) (%d+) ?(%a*)$')
  local mine_gone = node == ARGV[1] and not here[rooms[i]]
    and (open == 'open' or now - tonumber(placed) > tonumber(ARGV[3]))
  if not known[node] or mine_gone then redis.call('HDEL', KEYS[2], rooms[i]) end
end
return out
"""
)

# KEYS: rooms. ARGV: room, node. Removes the room's entry if it names that node.
_RELEASE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and string.match(entry, '^(%S+)') == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: nodes. ARGV: node id. Marks it draining; 0 when no such node is known.
_DRAIN = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local info = cjson.decode(raw)
info.state = 'draining'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
return 1
"""


class NoNodeFree(Exception):
    """No live node can take a new room: every one is draining or at its limit."""


@dataclass(frozen=True)
class Placement:
    node: str
    url: str
    new: bool  # placed by this call


@dataclass(frozen=True)
class NodeReport:
    """A node as the registry shows it."""

    id: str
    url: str
    state: NodeState
    rooms: int
    participants: int
    load: float
    max_rooms: int
    max_load: float
    age_s: float  # since its last report

    def public(self) -> dict[str, Any]:
        return {**vars(self), "state": self.state.value}


@dataclass(frozen=True)
class NodeCounts:
    """What a node reports of itself."""

    rooms: tuple[str, ...]
    participants: int


class Registry:
    """The cluster's two hashes, for anyone with the Redis: the nodes (`babelroom nodes`, /metrics) and draining."""

    def __init__(self, bus: Bus, live_s: float) -> None:
        self.bus = bus
        self.live_s = live_s
        self.nodes_key = bus.key("cluster", "nodes")
        self.rooms_key = bus.key("cluster", "rooms")
        self._drain = bus.client.register_script(_DRAIN)

    async def nodes(self) -> list[NodeReport]:
        """Every node the registry holds, live or dead, by id."""
        raw = await self.bus.client.hgetall(self.nodes_key)
        server_s, micros = await self.bus.client.time()
        now_ms = server_s * 1000 + micros // 1000
        return sorted((self._report(json.loads(value), now_ms) for value in raw.values()), key=lambda n: n.id)

    async def drain(self, node: str) -> bool:
        """Mark `node` draining (it takes no new room); False when no such node is known."""
        return bool(await self._drain(keys=[self.nodes_key], args=[node]))

    async def room_node(self, room: str) -> str | None:
        entry = await self.bus.client.hget(self.rooms_key, room)
        return entry.decode().split()[0] if entry else None

    def _report(self, info: dict[str, Any], now_ms: int) -> NodeReport:
        age_s = max(0.0, (now_ms - int(info["at"])) / 1000)
        state = NodeState(info["state"])
        if age_s > self.live_s and state is not NodeState.STOPPED:
            state = NodeState.DEAD
        return NodeReport(
            id=str(info["id"]),
            url=str(info["url"]),
            state=state,
            rooms=int(info["rooms"]),
            participants=int(info["participants"]),
            load=float(info["load"]),
            max_rooms=int(info["max_rooms"]),
            max_load=float(info["max_load"]),
            age_s=round(age_s, 1),
        )


class CpuMeter:
    """This process's CPU time per wall-clock second over the last LOAD_WINDOW_S: 1.0 is one core, busy."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = [(time.monotonic(), time.process_time())]

    def load(self) -> float:
        now = (time.monotonic(), time.process_time())
        self.samples = [s for s in self.samples if now[0] - s[0] <= LOAD_WINDOW_S] + [now]
        (wall0, cpu0), (wall1, cpu1) = self.samples[0], self.samples[-1]
        return round((cpu1 - cpu0) / (wall1 - wall0), 3) if wall1 - wall0 >= LOAD_MIN_SPAN_S else 0.0


class Node:
    """This gateway as a media node: it reports itself, places rooms, gives up the rooms that moved, drains."""

    def __init__(
        self,
        bus: Bus,
        options: NodeOptions,
        counts: Callable[[], NodeCounts],
        send_away: Callable[[Sequence[str], str], Any],
    ) -> None:
        """`counts`: the node's open rooms and participants now. `send_away(rooms, reason)`: end the sessions of
        those rooms with that reason (their pages rejoin through the cluster and find the rooms' new node)."""
        self.bus = bus
        self.options = options
        self.registry = Registry(bus, options.live_s)
        self.counts = counts
        self.send_away = send_away
        self.state = NodeState.SERVING
        self.instance = f"{time.time():.6f}"  # tells this process from an earlier one with the same id
        self.drained = asyncio.Event()  # draining, and no room left
        self.peers: dict[str, str] = {}  # every known node's URL, by id (the origins allowed to call the join API)
        self._draining_since: float | None = None
        self._cpu = CpuMeter()
        client = bus.client
        self._place, self._report_script = client.register_script(_PLACE), client.register_script(_REPORT)
        self._sweep, self._release = client.register_script(_SWEEP), client.register_script(_RELEASE)

    @property
    def id(self) -> str:
        return self.options.id

    @property
    def keys(self) -> list[str]:
        return [self.registry.nodes_key, self.registry.rooms_key]

    # -- placement ----------------------------------------------------------------------------------
    async def place(self, room: str) -> Placement:
        """Where `room` lives, placing it first if it lives nowhere (or its node is dead). Raises NoNodeFree."""
        node, url, new = await self._place(keys=self.keys, args=[room, int(self.options.live_s * 1000), self.id])
        if not node:
            raise NoNodeFree("every media node is draining or at its limit; no new room can open now")
        placement = Placement(_text(node), _text(url), bool(new))
        if placement.new:
            log.info("room %s placed on node %s", room, placement.node)
        return placement

    async def release(self, room: str) -> None:
        await self._release(keys=[self.registry.rooms_key], args=[room, self.id])

    # -- the node's own loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Report every report_s and sweep every trim interval, until cancelled; Redis errors are retried."""
        last_sweep = 0.0
        while True:
            try:
                await self.report()
                if time.monotonic() - last_sweep >= self.bus.options.trim_interval_s:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except RedisError as exc:
                log.warning("could not report node %s (%s); retrying", self.id, exc)
            await self._drain_step()  # with Redis or without: a draining node ends when its grace does
            await asyncio.sleep(self.options.report_s)

    async def report(self, counts: NodeCounts | None = None) -> None:
        counts = counts or self.counts()
        report = {
            "id": self.id,
            "url": self.options.url,
            "state": self.state.value,
            "instance": self.instance,
            "rooms": len(counts.rooms),
            "participants": counts.participants,
            "load": self._cpu.load(),
            "max_rooms": self.options.max_rooms,
            "max_load": self.options.max_load,
        }
        reply = await self._report_script(keys=self.keys, args=[self.id, json.dumps(report), *counts.rooms])
        state, moved = NodeState(_text(reply[0])), [_text(room) for room in reply[1:]]
        if state is NodeState.DRAINING and self.state is NodeState.SERVING:
            log.info("node %s was told to drain", self.id)
            self.drain()
        if moved:
            log.warning("rooms %s were placed on another node while this one seemed dead; sending them there", moved)
            await self.send_away(moved, "this room moved to another media server; rejoining there")

    async def sweep(self) -> None:
        """Forget what the dead and the closed left behind, and trim every node's results stream."""
        forget_ms = int(max(self.bus.options.retention_s, self.options.live_s) * 1000)
        args = [self.id, forget_ms, int(PLACED_HOLD_S * 1000), self.bus.stream(RESULTS) + ":"]
        known = await self._sweep(keys=self.keys, args=[*args, *self.counts().rooms])
        self.peers = {_text(known[i]): _text(known[i + 1]) for i in range(0, len(known), 2)}
        for node in self.peers:
            await self.bus.trim(results_stream(node), drop_empty=node != self.id)

    async def stop(self) -> None:
        """A clean stop: release this node's rooms and say so, so that their next join places them at once."""
        for room in self.counts().rooms:
            await self.release(room)
        self.state = NodeState.STOPPED
        await self.report(NodeCounts(rooms=(), participants=0))

    # -- draining ---------------------------------------------------------------------------------------
    async def drain_and_wait(self) -> None:
        """SIGTERM: drain, and return once the rooms here have ended or been moved (at once with no grace)."""
        self.drain()
        if self.options.drain_grace_s > 0:
            await self.drained.wait()

    def drain(self) -> None:
        """Take no new room from now on; the rooms here go on until they end or the grace passes."""
        if self.state is NodeState.DRAINING:
            return
        self.state = NodeState.DRAINING
        self._draining_since = time.monotonic()
        log.info("node %s drains: no new rooms; %d open, %.0f s of grace", self.id, len(self.counts().rooms),
                 self.options.drain_grace_s)  # fmt: skip

    async def _drain_step(self) -> None:
        if self._draining_since is None:
            return
        rooms = self.counts().rooms
        if rooms and time.monotonic() - self._draining_since >= self.options.drain_grace_s:
            log.info("node %s: the drain grace has passed; moving %d room(s)", self.id, len(rooms))
            with contextlib.suppress(RedisError):  # unreleased, they are placed again once this node is gone
                for room in rooms:
                    await self.release(room)
            await self.send_away(rooms, "this media server is going down; rejoining on another")
            rooms = self.counts().rooms
        if not rooms:
            self.drained.set()


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
