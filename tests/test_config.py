from __future__ import annotations

import pytest

from pipeline.config import BusOptions, env_flag


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
