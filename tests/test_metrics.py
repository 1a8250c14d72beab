"""/metrics: Prometheus text that prometheus_client's own parser reads, with the stage histograms filled
from the stamps of results that went through the real bus and the gateway's results reader."""

from __future__ import annotations

import asyncio
import time

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.options import GatewayOptions
from gateway.web.app import create_app
from pipeline.bus import Bus
from pipeline.messages import Dropped, SynthesizedSpeech, Transcript, Translation

NOW = time.time()
STAMPS = (("captured", NOW - 3.0), ("published", NOW - 2.9), ("asr", NOW - 2.0))
RESULTS = [
    Transcript(room="r", speaker="ana", seq=1, stamps=STAMPS, language="en", targets=("es",), text="hello"),
    Translation(room="r", speaker="ana", seq=1, stamps=(*STAMPS, ("mt", NOW - 1.9)), language="es", text="hola"),
    SynthesizedSpeech(
        room="r", speaker="ana", seq=1, stamps=(*STAMPS, ("mt", NOW - 1.9), ("tts", NOW - 1.5)), language="es"
    ),
    Dropped(room="r", speaker="ana", seq=2, stage="asr", reason="late", languages=("es",)),
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_parse_and_carry_the_stage_histograms(bus: Bus) -> None:
    app = create_app(bus, GatewayOptions())
    async with TestServer(app, host="127.0.0.1") as server, ClientSession(str(server.make_url(""))) as http:
        await asyncio.sleep(0.3)  # the results reader starts after the newest entry
        for message in RESULTS:
            await bus.publish(message)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with http.get("/metrics") as reply:
                text = await reply.text()
                content_type = reply.headers["Content-Type"]
            found = samples(text)
            if found.get(("babelroom_dropped_total", (("reason", "late"), ("stage", "asr")))) == 1:
                break
            await asyncio.sleep(0.1)
    assert content_type.startswith("text/plain")
    for stage, seconds in (("asr", 0.9), ("mt", 0.1), ("tts", 0.4)):
        assert found[("babelroom_stage_latency_seconds_count", (("stage", stage),))] == 1
        assert abs(found[("babelroom_stage_latency_seconds_sum", (("stage", stage),))] - seconds) < 0.01
    for result in ("caption", "translation", "speech"):
        assert found[("babelroom_end_to_end_latency_seconds_count", (("result", result),))] == 1
    assert found[("babelroom_dropped_total", (("reason", "late"), ("stage", "asr")))] == 1
    assert found[("babelroom_sessions", ())] == 0 and found[("babelroom_rooms", ())] == 0
    assert found[("babelroom_degradation_level", ())] == 0
    assert ("babelroom_backlog", (("stage", "asr"), ("state", "waiting"))) in found
    assert ("babelroom_dead_letters", ()) in found
