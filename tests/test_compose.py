"""compose.yaml and the Dockerfile, checked here without a Docker engine: the file is valid to a real
Compose implementation (Debian's docker-compose), and it only names settings and commands that exist."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.routes import WORKER_KINDS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("babelroom", "gateway", "pipeline", "workers")
JANUS_SECRETS = {"BABELROOM_JANUS_API_SECRET": "api-secret", "BABELROOM_JANUS_ADMIN_KEY": "admin-key"}


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose_config(BABELROOM_TOKEN_SECRET="test-secret", **JANUS_SECRETS)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def settings_read_by_the_code() -> set[str]:
    text = "\n".join(p.read_text() for d in SOURCES for p in (ROOT / d).rglob("*.py"))
    return set(re.findall(r'"((?:BABELROOM_|REDIS_URL)[A-Z0-9_]*)"', text))


def test_every_worker_kind_runs_on_the_gpu_against_the_shared_redis(config: dict[str, Any]) -> None:
    services = config["services"]
    for kind in WORKER_KINDS:
        worker = services[kind]
        assert worker["command"] == ["babelroom", "worker", kind]
        assert worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        [device] = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    assert services["gateway"]["command"][:2] == ["babelroom", "gateway"]


def test_the_gateway_drives_the_janus_service_with_the_secrets_it_shares(config: dict[str, Any]) -> None:
    janus, gateway = config["services"]["janus"], config["services"]["gateway"]
    assert janus["command"][:2] == ["babelroom", "janus"] and "ports" in janus, "browsers reach its media ports"
    for name, value in JANUS_SECRETS.items():
        assert janus["environment"][name] == gateway["environment"][name] == value
    assert gateway["environment"]["BABELROOM_JANUS_URL"] == "ws://janus:8188"


def test_every_setting_it_passes_is_one_the_code_reads(config: dict[str, Any]) -> None:
    known = settings_read_by_the_code()
    passed = {name for service in config["services"].values() for name in service.get("environment", {})}
    assert passed - known == set(), f"compose.yaml sets what nothing reads: {passed - known}"


def test_a_missing_token_secret_is_refused_with_a_clear_message() -> None:
    result = compose_config(**JANUS_SECRETS)
    assert result.returncode != 0 and "set BABELROOM_TOKEN_SECRET" in result.stderr
    result = compose_config(BABELROOM_TOKEN_SECRET="test-secret")
    assert result.returncode != 0 and "set BABELROOM_JANUS_API_SECRET" in result.stderr


def test_the_image_carries_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in (*SOURCES, "benchmarks"):
        assert f"COPY {package} {package}" in dockerfile
