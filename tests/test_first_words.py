"""Issue 27, the parts below the browser: the proxy tells the gateway as soon as Janus accepts a participant's
publish (so the forward of their audio is set up before their media is up), and a participant's page learns when
the gateway hears them ("live"), on the socket they have and on any later one."""

from __future__ import annotations

import json
from typing import Any

from benchmarks import join
from gateway.rooms.room import Participant, Profile
from gateway.web.proxy import Grant, Vetting

ROOM_ID, FEED_ID = 1234, 5678


def vetting_with_publisher(handle: int = 7) -> Vetting:
    vetting = Vetting(Grant(ROOM_ID, "pin", FEED_ID, "Sofia", lambda: {FEED_ID}))
    vetting.sessions.add(1)
    vetting.handles.update({handle: 1, handle + 1: 1})
    vetting.vet(
        {
            "janus": "message",
            "transaction": "t1",
            "session_id": 1,
            "handle_id": handle,
            "body": {"request": "join", "ptype": "publisher", "room": ROOM_ID, "id": FEED_ID},
        }
    )
    return vetting


def configured(sender: int, streams: Any, configured: str = "ok") -> dict[str, Any]:
    data = {"videoroom": "event", "room": ROOM_ID, "configured": configured, "streams": streams}
    return {"janus": "event", "sender": sender, "plugindata": {"plugin": "janus.plugin.videoroom", "data": data}}


STREAMS = [{"type": "audio", "mindex": 0, "mid": "0", "codec": "opus"}, {"type": "video", "mindex": 1, "mid": "1"}]


def test_janus_accepting_the_publish_names_the_streams_to_forward() -> None:
    vetting = vetting_with_publisher(handle=7)
    assert vetting.published_streams(configured(7, STREAMS)) == STREAMS


def test_only_the_publishers_own_answer_counts() -> None:
    vetting = vetting_with_publisher(handle=7)
    assert vetting.published_streams(configured(8, STREAMS)) is None, "a subscriber handle's event"
    assert vetting.published_streams(configured(7, STREAMS, configured="")) is None, "not an accepted publish"
    assert vetting.published_streams({"janus": "webrtcup", "sender": 7}) is None
    assert vetting.published_streams(configured(7, "not a list")) is None
    assert vetting.published_streams(configured(7, [1, "x", {"type": "audio", "mid": "0"}])) == [
        {"type": "audio", "mid": "0"}
    ]
    assert Vetting(Grant(ROOM_ID, "pin", FEED_ID, "x", set)).published_streams(configured(7, STREAMS)) is None


def drain(participant: Participant) -> list[dict[str, Any]]:
    out = []
    while not participant.outbox.empty():
        out.append(json.loads(participant.outbox.get_nowait()))
    return out


def test_the_page_learns_when_it_is_heard_and_when_not_any_more() -> None:
    participant = Participant("p1", "room", Profile("Sofia", "es", "es"))
    assert participant.live_state() == {"type": "live", "live": False, "heard_at": None}
    participant.set_heard(1000.5)
    participant.set_heard(None)
    assert [(m["live"], m["heard_at"]) for m in drain(participant)] == [(True, 1000.5), (False, None)]


def test_bench_join_counts_a_first_sentence_captioned_only_with_its_repetition_as_late() -> None:
    runs = [
        join.JoinRun(0, 1.2, 0.5, {"en": 1.1, "ca": 1.2}),
        join.JoinRun(1, 1.4, 0.7, {"en": 13.1, "ca": None}),  # the repetition's final; none at all
    ]
    summary = join.summarize(runs)
    assert summary["finals_within_target"] == 2 and summary["finals_expected"] == 4 and summary["finals_missed"] == 1
    assert summary["final_after_end_s"]["max"] == 13.1 and summary["page_to_live_s"]["p50"] == 1.3
