"""Language pairs warm before anyone speaks, and no interim caption waits for a cold one.

An Apertium pair's pipeline took 1.5-6 s to start on the 2 busy cores, and the mt stage translated every target
of an interim in one job: in a room with a second listening language, that language's first interim held back
every language's (first interim 2.3 s after speech onset instead of 0.9 s). Now a join tells the mt stage which
pairs the room needs (a WarmUp hint), the stage starts them in the background, and an interim goes out for the
ready targets at once while a cold one starts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.bridge.frames import FramePath
from gateway.bridge.ingest import Ingest
from gateway.media.playout import PlayoutOptions
from gateway.options import GatewayOptions
from gateway.rooms.overload import OverloadMonitor, OverloadOptions
from gateway.rooms.room import Participant, Profile, Room
from pipeline.bus import Bus
from pipeline.messages import InterimTranscript, InterimTranslation, WarmUp
from pipeline.metrics import Metrics
from pipeline.routes import WARM_UP
from workers.engines.mt.apertium import ApertiumTranslator
from workers.mt import MtStage
from workers.stage import PermanentError

START_TIMEOUT_S = 60.0  # a pipeline start, on a machine busy with other work


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def interim(revision: int, targets: tuple[str, ...]) -> InterimTranscript:
    return InterimTranscript(
        room="r", speaker="ana", seq=0, revision=revision, language="en", targets=targets,
        text="the house is big", committed="the house",
    )  # fmt: skip


async def test_a_join_announces_the_language_pairs_the_room_newly_needs(bus: Bus) -> None:
    ingest = Ingest(bus, GatewayOptions(), OverloadMonitor(bus, OverloadOptions(), Metrics()), FramePath(bus))
    room = Room("r", PlayoutOptions())

    async def join(name: str, speak: str, hear: str, consent: bool = True) -> None:
        participant = Participant(name, "r", Profile(name, speak, hear, consent=consent))
        room.add(participant)
        await ingest.warm_up(room, participant)

    await join("bea", "es", "es")  # alone: nothing to translate
    await join("ana", "en", "en")
    await join("cai", "ca", "ca")
    await join("eve", "en", "es")  # a learner: needs no pair the room did not have
    await join("gil", "gl", "en", consent=False)  # never translated: only what others need for gil to hear
    hints = [d.message for d in await bus.tail(WARM_UP, "0-0", count=10)]
    assert all(isinstance(h, WarmUp) for h in hints)
    assert [(h.speaker, h.pairs) for h in hints if isinstance(h, WarmUp)] == [
        ("ana", (("en", "es"), ("es", "en"))),
        ("cai", (("ca", "en"), ("ca", "es"), ("en", "ca"), ("es", "ca"))),
    ]


def test_a_warm_up_hint_starts_its_pairs_in_the_background() -> None:
    translator = ApertiumTranslator()
    try:
        stage = MtStage(translator=translator)
        assert stage.process(WarmUp(room="r", speaker="cai", seq=0, pairs=(("es", "ca"), ("en", "en")))) == []
        assert not translator.ready("es", "ca"), "the hint returned at once, before the pipelines started"
        until(lambda: translator.ready("es", "ca"), "es->en->ca to start")
        assert set(translator.pipes) == {("es", "en"), ("en", "ca")}
        with pytest.raises(PermanentError, match="'xx'"):
            stage.process(WarmUp(room="r", speaker="cai", seq=0, pairs=(("en", "xx"),)))
    finally:
        translator.close()


def test_an_interim_caption_never_waits_for_a_cold_language_pair() -> None:
    translator = ApertiumTranslator()
    try:
        translator.warm([("en", "es")])
        stage = MtStage(translator=translator)
        first = stage.process(interim(0, ("ca", "es")))
        assert [(m.language, m.text) for m in first if isinstance(m, InterimTranslation)] == [
            ("es", "La casa es grande")
        ], "Spanish went out while the Catalan pipeline started"
        until(lambda: translator.ready("en", "ca"), "en->ca to start")
        second = stage.process(interim(1, ("ca", "es")))
        assert [(m.language, m.text) for m in second if isinstance(m, InterimTranslation)] == [
            ("ca", "la casa és gran"),
            ("es", "La casa es grande"),
        ]
    finally:
        translator.close()
