"""The overload policy on its own (pure: loads and time in, decision out)."""

from __future__ import annotations

import pytest

from gateway.rooms.overload import Level, OverloadOptions, OverloadPolicy, StageLoad, predicted_delays

BOUND = 15.0


def loads(asr_waiting: int = 0, tts_waiting: int = 0, lipsync_waiting: int = 0) -> dict[str, StageLoad]:
    return {
        "asr": StageLoad(waiting=asr_waiting, workers=1, service_s=0.5),
        "mt": StageLoad(workers=1, service_s=0.01),
        "tts": StageLoad(waiting=tts_waiting, workers=1, service_s=0.1),
        "lipsync": StageLoad(waiting=lipsync_waiting, workers=1, service_s=0.5),
    }


def test_a_stage_delay_is_what_is_ahead_plus_itself_shared_among_workers() -> None:
    assert StageLoad(waiting=3, in_progress=1, workers=2, service_s=1.0).delay_s == pytest.approx(2.5)
    assert StageLoad(waiting=9).delay_s == 0.0  # no measurement yet: no prediction
    delays = predicted_delays(loads(asr_waiting=9))
    assert delays["caption"] == pytest.approx(10 * 0.5 + 0.01)
    assert delays["speech"] == pytest.approx(delays["caption"] + 0.1)
    assert delays["lipsync"] == pytest.approx(delays["speech"] + 0.5)


def test_lipsync_goes_first_then_speech_and_captions_never() -> None:
    policy = OverloadPolicy(OverloadOptions(late_bound_s=BOUND))
    assert policy.decide(loads(), now=0).level is Level.FULL
    lipsync_behind = policy.decide(loads(lipsync_waiting=14), now=1)  # lipsync path 8.1 s > 7.5 s
    assert (lipsync_behind.level, lipsync_behind.changed) == (Level.NO_LIPSYNC, True)
    assert policy.service(100.0).lipsync is False and policy.service(100.0).speech is True
    burst = policy.decide(loads(asr_waiting=25), now=2)  # speech path 13.1 s > 11.25 s
    assert burst.level is Level.CAPTIONS_ONLY
    service = policy.service(captured_at=100.0)
    assert (service.speech, service.lipsync, service.deadline) == (False, False, 100.0 + BOUND)
    assert burst.notice()["type"] == "service" and "captions continue" in burst.notice()["message"]


def test_recovery_waits_for_the_backlog_to_clear_and_steps_back_one_level_at_a_time() -> None:
    policy = OverloadPolicy(OverloadOptions(late_bound_s=BOUND, hold_s=5.0))
    assert policy.decide(loads(asr_waiting=40), now=0).level is Level.CAPTIONS_ONLY
    assert policy.decide(loads(asr_waiting=15), now=10).level is Level.CAPTIONS_ONLY  # 8.1 s: above 5.6 s
    assert policy.decide(loads(), now=2).level is Level.CAPTIONS_ONLY  # cleared, but held less than 5 s
    step = policy.decide(loads(), now=10)
    assert (step.level, step.changed) == (Level.NO_LIPSYNC, True)
    assert policy.decide(loads(), now=12).level is Level.NO_LIPSYNC
    assert policy.decide(loads(), now=15).level is Level.FULL
    assert policy.decide(loads(), now=16).changed is False
