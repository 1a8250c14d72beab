"""The service's Prometheus metrics, in one place: built on a registry of their own (one per gateway,
so several in a process never collide) and fed through a small API the gateway calls.

Latency comes from the messages themselves: each result carries a stamp per stage, so the gateway that
reads `results` observes every stage's latency (from the previous stamp to the stage's own: waiting in
its queue plus processing) and the end-to-end delay (from the end of the speech to the gateway).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipeline.messages import Dropped, Message, SynthesizedSpeech, Transcript, Translation, VideoClip

# Seconds: from well under a stage's usual time to past the late bound.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
RESULT_NAMES: Mapping[type[Message], str] = {
    Transcript: "caption",
    Translation: "translation",
    SynthesizedSpeech: "speech",
    VideoClip: "video",
}
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_latency = Histogram(
            "babelroom_stage_latency_seconds", "A stage's part of a result's latency: queue wait plus processing",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "babelroom_end_to_end_latency_seconds", "From the end of the speech to the result at the gateway",
            ["result"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.backlog = Gauge(
            "babelroom_backlog", "Segments per stage: waiting, or in progress", ["stage", "state"], registry=r
        )
        self.workers = Gauge("babelroom_workers_alive", "Workers with a live heartbeat", ["stage"], registry=r)
        self.predicted = Gauge(
            "babelroom_predicted_delay_seconds", "Predicted delay of a new segment's result", ["result"], registry=r
        )
        self.dead_letters = Gauge("babelroom_dead_letters", "Entries in the dead-letter stream", registry=r)
        self.degradation = Gauge(
            "babelroom_degradation_level", "0: full service; 1: lip-sync off; 2: translated speech off too", registry=r
        )
        self.degradations = Counter(
            "babelroom_degradations", "Times the service stepped down to a level", ["level"], registry=r
        )
        self.dropped = Counter(
            "babelroom_dropped", "Segments a stage dropped, e.g. too late", ["stage", "reason"], registry=r
        )
        self.video = Gauge(
            "babelroom_video", "Lip-sync path: segments shown lip-synced or with the original frames; frames "
            "stored; clips received", ["what"], registry=r,
        )  # fmt: skip
        self.echo = Gauge(
            "babelroom_echo", "Echo guard: participants' segments (and onsets) checked against what they were "
            "played, and those found to be echo (not translated)", ["what"], registry=r,
        )  # fmt: skip
        self.sessions = Gauge("babelroom_sessions", "Participants connected to this gateway", registry=r)
        self.rooms = Gauge("babelroom_rooms", "Rooms with at least one participant", registry=r)
        # The cluster's media nodes as the registry shows them (gateway/rooms/placement.py): one series per node.
        self.node_rooms = Gauge("babelroom_node_rooms", "Rooms open on a media node", ["node", "state"], registry=r)
        self.node_participants = Gauge(
            "babelroom_node_participants", "Participants on a media node", ["node"], registry=r
        )
        self.node_load = Gauge(
            "babelroom_node_load", "A media node's gateway CPU, as a share of one core", ["node"], registry=r
        )
        self.node_live = Gauge("babelroom_node_live", "1 while a media node reports, else 0", ["node"], registry=r)
        self.http_errors = Counter(
            "babelroom_http_unexpected_errors", "Requests answered 500 because something unexpected failed", registry=r
        )

    def observe_result(self, message: Message, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if isinstance(message, Dropped):
            self.dropped.labels(message.stage, message.reason).inc()
            return
        result = RESULT_NAMES.get(type(message))
        if result is None or len(message.stamps) < 2:
            return
        (_, before), (stage, at) = message.stamps[-2], message.stamps[-1]
        self.stage_latency.labels(stage).observe(max(0.0, at - before))
        captured = message.stamp("captured")
        if captured is not None:
            self.end_to_end.labels(result).observe(max(0.0, now - captured))

    def set_backlog(self, stage: str, waiting: int, in_progress: int, workers: int) -> None:
        self.backlog.labels(stage, "waiting").set(waiting)
        self.backlog.labels(stage, "in_progress").set(in_progress)
        self.workers.labels(stage).set(workers)

    def set_predicted(self, delays: Mapping[str, float]) -> None:
        for result, seconds in delays.items():
            self.predicted.labels(result).set(seconds)

    def set_level(self, level: int, name: str, stepped_down: bool) -> None:
        self.degradation.set(level)
        if stepped_down:
            self.degradations.labels(name).inc()

    def set_dead_letters(self, count: int) -> None:
        self.dead_letters.set(count)

    def set_sessions(self, sessions: int, rooms: int) -> None:
        self.sessions.set(sessions)
        self.rooms.set(rooms)

    def set_video(self, counts: Mapping[str, int]) -> None:
        for what, count in counts.items():
            self.video.labels(what).set(count)

    def set_echo(self, counts: Mapping[str, int]) -> None:
        for what, count in counts.items():
            self.echo.labels(what).set(count)

    def set_nodes(self, nodes: Sequence[Mapping[str, Any]]) -> None:
        """Each node's report (id, state, rooms, participants, load); series of nodes no longer known go."""
        for gauge in (self.node_rooms, self.node_participants, self.node_load, self.node_live):
            gauge.clear()
        for node in nodes:
            self.node_rooms.labels(node["id"], node["state"]).set(node["rooms"])
            self.node_participants.labels(node["id"]).set(node["participants"])
            self.node_load.labels(node["id"]).set(node["load"])
            self.node_live.labels(node["id"]).set(0 if node["state"] in ("dead", "stopped") else 1)

    def count_http_error(self) -> None:
        self.http_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
