"""Rooms placed on media nodes in a real Redis (gateway/rooms/placement.py): least-loaded first, atomically, where
the room already is, never on a node that is draining, dead or at its limit; a dead node's rooms placed again, a
late node told which of its rooms moved; what the dead and the closed leave behind swept away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from gateway.options import NodeOptions
from gateway.rooms import placement
from gateway.rooms.placement import Node, NodeCounts, NodeState, NoNodeFree, Registry
from pipeline.bus import Bus
from pipeline.config import BusOptions
from pipeline.messages import Transcript
from pipeline.routes import results_stream

LIVE_S = 1.0
REPORT_S = 0.2


@dataclass
class FakeRooms:
    """What a gateway would report: its open rooms, and the rooms whose sessions it was told to end."""

    open: list[str] = field(default_factory=list)
    sent_away: list[tuple[str, ...]] = field(default_factory=list)

    def counts(self) -> NodeCounts:
        return NodeCounts(rooms=tuple(self.open), participants=2 * len(self.open))

    async def send_away(self, rooms: Sequence[str], reason: str) -> None:
        self.sent_away.append(tuple(rooms))
        self.open = [r for r in self.open if r not in rooms]


class Cluster:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.buses: list[Bus] = []
        self.rooms: dict[str, FakeRooms] = {}

    def node(self, node_id: str, **limits: float) -> Node:
        """A node on a Redis connection of its own, as another host would have."""
        bus = Bus.connect(BusOptions(redis_url=self.redis_url, prefix=self.prefix, retention_s=1.0))
        self.buses.append(bus)
        rooms = self.rooms.setdefault(node_id, FakeRooms())
        limits = {"max_load": 0.0, **limits}  # the test process's own CPU is no node's load
        url = f"http://{node_id}.test:8080"
        options = NodeOptions(id=node_id, url=url, report_s=REPORT_S, live_s=LIVE_S, **limits)  # type: ignore[arg-type]
        return Node(bus, options, rooms.counts, rooms.send_away)


async def two_nodes(cluster: Cluster, busy: str, *rooms: str) -> tuple[Node, Node]:
    """Nodes a and b, reported, `rooms` open on `busy`."""
    a, b = cluster.node("a"), cluster.node("b")
    cluster.rooms[busy].open = list(rooms)
    for node in (a, b):
        await node.report()
    return a, b


@pytest.fixture
async def cluster(redis_url: str, stream_prefix: str) -> AsyncIterator[Cluster]:
    made = Cluster(redis_url, stream_prefix)
    yield made
    for bus in made.buses:
        await bus.close()


async def test_a_room_goes_to_the_least_loaded_node_and_stays(cluster: Cluster) -> None:
    a, b = await two_nodes(cluster, "a", "old1", "old2")
    first = await a.place("r1")
    assert (first.node, first.url, first.new) == ("b", "http://b.test:8080", True), "b held fewer rooms"
    assert (await b.place("r1")).node == "b" and not (await a.place("r1")).new, "later joins go where it is"
    spread = [(await a.place(f"new{i}")).node for i in range(4)]
    assert sorted(spread) == ["a", "a", "b", "b"], spread  # a: 2 open + 2 = 4; b: 1 + 2 = 3, then the tie


async def test_two_first_joins_through_two_nodes_at_once_agree(cluster: Cluster) -> None:
    nodes = [cluster.node("a"), cluster.node("b")]
    for node in nodes:
        await node.report()
    rooms = [f"burst{i}" for i in range(20)]
    calls = [node.place(room) for room in rooms for node in nodes for _ in range(3)]  # 6 joins per room, at once
    placed = await asyncio.gather(*calls)
    by_room: dict[str, set[str]] = {}
    for room, where in zip([r for r in rooms for _ in range(6)], placed, strict=True):
        by_room.setdefault(room, set()).add(where.node)
    assert all(len(where) == 1 for where in by_room.values()), by_room
    assert sum(p.new for p in placed) == len(rooms), "each room placed once"
    per_node = [sum(where == {n.id} for where in by_room.values()) for n in nodes]
    assert per_node == [10, 10], f"a burst spreads evenly: {per_node}"


async def test_a_node_at_its_limit_or_draining_takes_no_new_room(cluster: Cluster) -> None:
    a, b = cluster.node("a", max_rooms=1), cluster.node("b", max_load=0.5)
    b._cpu.load = lambda: 0.9  # type: ignore[method-assign]  # its gateway is busy: past its load limit
    for node in (a, b):
        await node.report()
    assert (await a.place("r1")).node == "a"
    started = time.monotonic()
    with pytest.raises(NoNodeFree, match="draining or at its limit"):
        await b.place("r2")
    assert time.monotonic() - started < 0.5, "a clear answer, not a hang"
    assert (await b.place("r1")).node == "a", "an existing room is still found"
    c = cluster.node("c")
    await c.report()
    assert (await a.place("r2")).node == "c"
    c.drain()
    await c.report()
    with pytest.raises(NoNodeFree):
        await a.place("r3")
    assert (await a.place("r2")).node == "c", "a draining node keeps its rooms"
    states = {n.id: n.state for n in await Registry(a.bus, LIVE_S).nodes()}
    assert states == {"a": NodeState.SERVING, "b": NodeState.SERVING, "c": NodeState.DRAINING}


async def test_a_dead_nodes_room_is_placed_again_and_the_late_node_is_told(cluster: Cluster) -> None:
    a, b = await two_nodes(cluster, "a", "busy1", "busy2")
    assert (await a.place("r1")).node == "b"
    cluster.rooms["b"].open = ["r1"]
    await b.report()
    await asyncio.sleep(LIVE_S + 0.3)  # b stops reporting: dead
    await a.report()
    assert [n.state for n in await a.registry.nodes()] == [NodeState.SERVING, NodeState.DEAD]
    again = await a.place("r1")
    assert (again.node, again.new) == ("a", True), "placed again on a live node at its next join"
    await b.report()  # b was only late: it learns that r1 lives elsewhere now, and sends its participants there
    assert cluster.rooms["b"].sent_away == [("r1",)]
    assert (await b.place("r1")).node == "a"


async def test_a_stopped_node_releases_its_rooms_at_once(cluster: Cluster) -> None:
    a, b = await two_nodes(cluster, "b", "x", "y")
    assert (await a.place("r1")).node == "a"
    cluster.rooms["a"].open = ["r1"]
    await a.report()
    await a.stop()
    assert (await b.place("r1")).node == "b", "no wait for a to count as dead"
    assert [n.state for n in await b.registry.nodes()] == [NodeState.STOPPED, NodeState.SERVING]


async def test_a_draining_node_moves_its_rooms_after_the_grace(cluster: Cluster) -> None:
    a, b = cluster.node("a", drain_grace_s=0.5), cluster.node("b")
    for node in (a, b):
        await node.report()
    assert (await a.place("r1")).node == "a"
    cluster.rooms["a"].open = ["r1"]
    runs = [asyncio.create_task(node.run()) for node in (a, b)]
    try:
        assert await Registry(b.bus, LIVE_S).drain("a")
        assert not await Registry(b.bus, LIVE_S).drain("nobody")
        await asyncio.wait_for(a.drained.wait(), timeout=5)
    finally:
        for run in runs:
            run.cancel()
    assert cluster.rooms["a"].sent_away == [("r1",)]
    assert a.state is NodeState.DRAINING
    assert (await a.place("r1")).node == "b", "its room opens on another node at the next join"


async def test_the_sweep_forgets_what_the_closed_and_the_dead_left(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(placement, "PLACED_HOLD_S", 0.5)
    a, b = cluster.node("a"), cluster.node("b")
    for node in (a, b):
        await node.report()
    for room in ("closed", "never-opened", "fresh"):
        await a.registry.bus.client.hset(a.registry.rooms_key, room, f"a {int(time.time() * 1000)}")
    cluster.rooms["a"].open = ["closed"]
    await a.report()  # marks it open
    cluster.rooms["a"].open = []  # ... and it closes
    await b.bus.publish(Transcript(room="gone", speaker="s", seq=0, node="b"), results_stream("b"))
    await b.registry.bus.client.hset(a.registry.rooms_key, "on-b", f"b {int(time.time() * 1000)}")
    await asyncio.sleep(0.6)
    await a.bus.client.hset(a.registry.rooms_key, "fresh", f"a {int(time.time() * 1000)}")
    await a.sweep()
    rooms = await a.bus.client.hgetall(a.registry.rooms_key)
    assert sorted(rooms) == [b"fresh", b"on-b"], "closed: released at once; never opened: after the hold"
    cluster.rooms["a"].open = ["fresh"]
    await asyncio.sleep(1.1)  # b is dead past the retention (1 s), and so are its results
    await a.report()
    await a.sweep()
    assert not await a.bus.client.exists(a.bus.stream(results_stream("b"))), "its results stream is gone"
    await a.sweep()
    assert [n.id for n in await a.registry.nodes()] == ["a"], "then the node itself"
    assert list(await a.bus.client.hgetall(a.registry.rooms_key)) == [b"fresh"], "and the rooms placed on it"
