"""Results from the bus become captions and playout: what each listener is sent, and when playout stops
waiting for a segment that will bring no speech."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.media.playout import Clip, PlayoutOptions
from gateway.rooms import captions
from gateway.rooms.room import Participant, Profile, Room
from pipeline.audio import float_to_pcm16
from pipeline.messages import Transcript, Translation


@pytest.fixture
def room() -> Iterator[Room]:
    room = Room("r", PlayoutOptions())
    for pid, name, speak, hear in (("ana", "Ana", "en", "en"), ("bea", "Bea", "es", "es")):
        room.add(Participant(pid, "r", Profile(name, speak, hear)))
    yield room


def sent(room: Room, pid: str) -> list[dict[str, object]]:
    """What was queued for this participant since the last look."""
    outbox = room.participants[pid].outbox
    return [json.loads(outbox.get_nowait()) for _ in range(outbox.qsize())]


def clip(seq: int) -> Clip:
    tone = 0.3 * np.sin(np.linspace(0, 400 * np.pi, 16_000)).astype(np.float32)
    return Clip.from_pcm16("ana", seq, float_to_pcm16(tone), 16_000, captured_at=None, ready_at=100.0)


def test_no_speech_sends_no_caption_and_playout_stops_waiting(room: Room) -> None:
    timeline = room.timeline("es")
    timeline.expect("ana", 0)
    timeline.expect("ana", 1)
    captions.dispatch({"r": room}, Transcript(room="r", speaker="ana", seq=0, language="en", targets=("es",)))
    retract = {"type": "retract", "id": "ana:0"}  # the interim captions shown while it was spoken go: no caption
    assert sent(room, "ana") == [retract] and sent(room, "bea") == [retract]
    outcome, placements = timeline.offer(clip(1), now=100.0)
    assert outcome == "scheduled" and placements, "segment 1 must not wait for the silent segment 0"


def test_words_reach_the_speaker_final_and_the_listener_pending_then_translated(room: Room) -> None:
    transcript = Transcript(room="r", speaker="ana", seq=0, language="en", targets=("es",), text="The house.")
    captions.dispatch({"r": room}, transcript)
    [own] = sent(room, "ana")
    [pending] = sent(room, "bea")
    assert own["final"] is True and own["text"] == "The house." and own["lang"] == "en"
    assert pending["final"] is False and pending["lang"] == "es" and pending["original"] == "The house."
    translation = Translation(room="r", speaker="ana", seq=0, source_language="en", language="es",
                              source_text="The house.", text="La casa.")  # fmt: skip
    captions.dispatch({"r": room}, translation)
    [final] = sent(room, "bea")
    assert final["text"] == "La casa." and final["final"] is True
    assert sent(room, "ana") == []  # the speaker never gets their own translation
