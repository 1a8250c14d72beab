"""Floor control and fan-out planning, with time passed in so every case is deterministic."""

from __future__ import annotations

import pytest

from pipeline.turns import (
    Disposition,
    FloorEvent,
    FloorOptions,
    OverlapPolicy,
    Participant,
    Room,
    listeners_for,
    plan_targets,
)


def room(overlap: OverlapPolicy = OverlapPolicy.QUEUE) -> Room:
    r = Room("r1", FloorOptions(silence_timeout_s=3.0, overlap=overlap), clock=lambda: 0.0)
    for participant in (
        Participant("ann", "en", "en"),
        Participant("bea", "es", "es"),
        Participant("cai", "en", "es"),
        Participant("dov", "ca", "ca"),
        Participant("eve", "en", "gl"),
    ):
        r.join(participant)
    return r


def actions(events: list[FloorEvent] | tuple[FloorEvent, ...]) -> list[tuple[str, str, str]]:
    return [(e.action, e.participant, e.reason) for e in events]


def test_request_grants_a_free_floor_then_queues_in_order() -> None:
    r = room()
    assert actions(r.request("ann", now=0.0)) == [("granted", "ann", "request")]
    assert actions(r.request("bea", now=0.5)) == [("queued", "bea", "request")]
    assert actions(r.request("dov", now=0.6)) == [("queued", "dov", "request")]
    assert r.request("bea", now=0.7) == []  # already queued: once
    assert actions(r.release("ann", now=1.0)) == [("released", "ann", "released"), ("granted", "bea", "queue")]
    assert r.holder == "bea" and r.queue == ["dov"]


def test_silence_timeout_releases_the_floor_and_the_queue_moves_on() -> None:
    r = room()
    r.request("ann", now=0.0)
    r.request("bea", now=1.0)
    assert r.heard("ann", now=2.5) == []
    assert r.tick(now=5.4) == []  # 2.9 s after the last speech
    assert actions(r.tick(now=5.6)) == [("released", "ann", "silence_timeout"), ("granted", "bea", "queue")]


def test_speech_onset_takes_a_free_floor_and_others_speaking_do_not_steal_it() -> None:
    r = room()
    assert actions(r.heard("bea", now=0.0)) == [("granted", "bea", "speech")]
    assert r.heard("ann", now=0.1) == [] and r.holder == "bea"
    assert r.submit("ann", now=0.5).disposition is Disposition.WAIT


def test_the_injected_clock_is_used_when_no_time_is_passed() -> None:
    now = [0.0]
    r = Room("r", FloorOptions(silence_timeout_s=1.0), clock=lambda: now[0])
    r.join(Participant("ann", "en", "es"))
    r.request("ann")
    now[0] = 1.5
    assert actions(r.tick()) == [("released", "ann", "silence_timeout")]


def test_speech_on_a_free_floor_takes_it_and_is_translated_per_language() -> None:
    r = room()
    plan = r.submit("ann", now=0.0)
    assert plan.disposition is Disposition.TRANSLATE
    assert plan.targets == ("ca", "es", "gl")
    assert actions(plan.events) == [("granted", "ann", "speech")]


def test_overlap_queue_policy_makes_the_overlapping_speech_wait() -> None:
    r = room(OverlapPolicy.QUEUE)
    r.submit("ann", now=0.0)
    plan = r.submit("bea", now=0.5)
    assert plan.disposition is Disposition.WAIT and plan.targets == ()
    assert actions(plan.events) == [("queued", "bea", "speech")]
    granted = r.release("ann", now=1.0)
    assert ("granted", "bea", "queue") in actions(granted)
    resubmitted = r.submit("bea", now=1.0)  # the gateway resubmits what it held
    assert resubmitted.disposition is Disposition.TRANSLATE and resubmitted.targets == ("ca", "en", "gl")


def test_overlap_captions_only_policy_transcribes_without_translating_or_queueing() -> None:
    r = room(OverlapPolicy.CAPTIONS_ONLY)
    r.submit("ann", now=0.0)
    plan = r.submit("bea", now=0.5)
    assert plan.disposition is Disposition.CAPTIONS_ONLY and plan.targets == ()
    assert r.queue == [] and r.holder == "ann"


def test_leaving_releases_the_floor_and_drops_queued_requests() -> None:
    r = room()
    r.request("ann", now=0.0)
    r.request("bea", now=0.1)
    r.request("dov", now=0.2)
    assert actions(r.leave("bea", now=0.3)) == [("dequeued", "bea", "left")]
    assert actions(r.leave("ann", now=0.4)) == [("released", "ann", "left"), ("granted", "dov", "queue")]
    assert "ann" not in r.participants and r.queue == []


def test_unknown_participants_cannot_take_the_floor() -> None:
    with pytest.raises(KeyError):
        room().request("zed", now=0.0)


def test_targets_exclude_the_speaker_and_listeners_of_the_speakers_language() -> None:
    r = room()
    assert plan_targets(r, "ann") == ("ca", "es", "gl")  # cai hears es; ann's own "en" is not a target
    assert plan_targets(r, "bea") == ("ca", "en", "gl")  # cai hears es = bea's language: original audio
    assert listeners_for(r, "es") == ("bea", "cai")
    assert listeners_for(r, "es", speaker_id="bea") == ("cai",)


def test_one_run_per_language_however_many_listeners() -> None:
    r = Room("big", clock=lambda: 0.0)
    r.join(Participant("host", "en", "en"))
    for i in range(31):
        r.join(Participant(f"p{i}", "en", ("es", "ca", "gl")[i % 3]))
    targets = plan_targets(r, "host")
    assert targets == ("ca", "es", "gl")
    assert sum(len(listeners_for(r, lang, "host")) for lang in targets) == 31


def test_events_become_control_messages() -> None:
    event = room().request("ann", now=0.0)[0]
    message = event.to_message("r1", seq=7)
    assert (message.room, message.speaker, message.action, message.detail) == ("r1", "ann", "granted", "request")
