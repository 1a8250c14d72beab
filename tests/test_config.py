from __future__ import annotations

import pytest

from gateway.options import MAX_JANUS_SESSIONS, MAX_PENDING_TRANSACTIONS, GatewayOptions
from pipeline.config import BusOptions, env_flag
from pipeline.turns import OverlapPolicy


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("Yes", True), (" on ", True), ("0", False), ("", False)])
def test_env_flag_reads_yes_and_no(value: str, expected: bool) -> None:
    assert env_flag({"X": value}, "X") is expected


def test_env_flag_default_and_typos() -> None:
    assert env_flag({}, "X", default=True) is True
    with pytest.raises(ValueError, match="X='ture'"):
        env_flag({"X": "ture"}, "X")


def test_bus_options_from_env() -> None:
    options = BusOptions.from_env({"REDIS_URL": "redis://h:1/0", "BABELROOM_CLAIM_IDLE_MS": "500"})
    assert options.redis_url == "redis://h:1/0" and options.claim_idle_ms == 500 and options.max_deliveries == 3


def test_gateway_floor_policy_from_env() -> None:
    options = GatewayOptions.from_env({"BABELROOM_OVERLAP": "captions_only", "BABELROOM_FLOOR_SILENCE_S": "5"})
    assert options.floor.overlap is OverlapPolicy.CAPTIONS_ONLY and options.floor.silence_timeout_s == 5.0
    assert GatewayOptions.from_env({}).floor.overlap is OverlapPolicy.QUEUE
    with pytest.raises(ValueError, match="choose one of queue, captions_only"):
        GatewayOptions.from_env({"BABELROOM_OVERLAP": "shout"})


def test_gateway_segmenter_from_env() -> None:
    options = GatewayOptions.from_env({"BABELROOM_VAD": "silero", "BABELROOM_MAX_SEGMENT_S": "6"})
    assert options.segmenter.vad == "silero" and options.segmenter.max_segment_s == 6.0
    assert GatewayOptions.from_env({}).segmenter.vad == "webrtc"
    with pytest.raises(ValueError, match="choose one of webrtc, silero"):
        GatewayOptions.from_env({"BABELROOM_VAD": "energy"})


def test_the_proxy_limits_per_participant_from_env() -> None:
    options = GatewayOptions.from_env({"BABELROOM_MAX_MEDIA_SOCKETS": "1", "BABELROOM_MAX_JANUS_HANDLES": "32"})
    assert (options.proxy.sockets, options.proxy.handles) == (1, 32)
    assert (options.proxy.sessions, options.proxy.pending) == (MAX_JANUS_SESSIONS, MAX_PENDING_TRANSACTIONS)
    with pytest.raises(ValueError, match="at least 1"):  # 0 would refuse every participant
        GatewayOptions.from_env({"BABELROOM_MAX_JANUS_SESSIONS": "0"})
