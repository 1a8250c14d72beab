"""The Kubernetes manifests (deploy/k8s), checked without a cluster: both overlays render with kubectl's built-in
Kustomize; every object validates strictly against the Kubernetes schemas of KUBERNETES_VERSION
(kubernetes-validate), and the ScaledObjects against KEDA's CRD (vendored in tests/data/keda with its licence and
tag); and what they run is what the code has: its commands, its settings, its streams and groups, the figures of
its benchmarks. tests/test_autoscaling.py drives the lag KEDA reads; `make image-test` runs the CPU overlay."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from babelroom.cli import parser, run_health
from babelroom.supervisor import redis_argv
from pipeline.config import STREAM_PREFIX
from pipeline.routes import INTERIM_STREAMS, WORKER_KINDS
from tests.kube import (
    KUBERNETES_VERSION,
    OVERLAYS,
    PLAY_DOMAIN,
    PODMAN_RUNS,
    ROOT,
    Object,
    config_map_data,
    containers,
    for_podman_play,
    named,
    one,
    play_pod_name,
    render,
)
from tests.test_compose import settings_read_by_the_code

KEDA_CRD = ROOT / "tests" / "data" / "keda" / "keda.sh_scaledobjects.yaml"
# The redis-streams scaler's metadata in lag mode, as KEDA v2.20.2 names it (pkg/scalers/redis_streams_scaler.go).
REDIS_STREAMS_METADATA = {"addressFromEnv", "stream", "consumerGroup", "lagCount", "activationLagCount"}
# Settings the manifests set for Kubernetes or KEDA, not for the code: $(...) in a command, KEDA's address.
MANIFEST_ONLY = {"BABELROOM_NODES_DOMAIN", "REDIS_ADDRESS", "POD_NAME", "HOST_IP", "BABELROOM_TURN_RELAY_TO"}
QUEUE_BUDGET_S = 0.5  # lagCount: what one worker clears in this long (deploy/k8s/base/autoscaling.yaml)
GPU_BATCH = 8  # BABELROOM_BATCH_SIZE of the GPU overlay, the batch whose bench gpu figure sets its lagCount
GPU_KINDS = ("asr", "mt", "tts")  # lip-sync keeps its CPU engine in the GPU overlay
DRAIN_MARGIN_S = 40  # docs/deployment.md: the grace a container manager gives a node beyond BABELROOM_DRAIN_GRACE_S


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Object]]:
    return request.param, render(request.param)


def scaled_objects(objects: list[Object]) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in named(objects, "ScaledObject")}


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server's strict field validation reads it: an object that lists its properties
    takes no other (unless it says it keeps unknown fields)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        closed = "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields")
        if closed and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    return [strict(item) for item in schema] if isinstance(schema, list) else schema


@pytest.fixture(scope="module")
def keda_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def keda_errors(validator: jsonschema.Draft7Validator, obj: Object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# --- rendered and valid --------------------------------------------------------------------------------------


def test_each_overlay_renders_the_whole_service(overlay: tuple[str, list[Object]]) -> None:
    name, objects = overlay
    kinds = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
             for o in objects}  # fmt: skip
    assert {("StatefulSet", "redis"), ("Service", "redis"), ("StatefulSet", "media"), ("Service", "media")} <= kinds
    for kind in WORKER_KINDS:
        assert {("Deployment", kind), ("ScaledObject", kind)} <= kinds
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"babelroom"}
    assert (("PersistentVolumeClaim", "babelroom-models") in kinds) == (name == "gpu")


def test_every_object_validates_strictly_against_the_kubernetes_schemas(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    checked = 0
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            continue  # a CRD: kubernetes-validate has no schema for it (see the KEDA test)
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises, naming the field
        checked += 1
    assert checked >= 12


def test_the_kubernetes_check_refuses_a_misspelled_field() -> None:
    objects = render("cpu")
    media = json.loads(json.dumps(one(objects, "StatefulSet", "media")))
    media["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrok"):
        kubernetes_validate.validate(media, KUBERNETES_VERSION, strict=True)


def test_the_scaled_objects_validate_against_kedas_crd(
    overlay: tuple[str, list[Object]], keda_validator: jsonschema.Draft7Validator
) -> None:
    _, objects = overlay
    for name, scaled in scaled_objects(objects).items():
        assert keda_errors(keda_validator, scaled) == [], name
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            assert set(trigger["metadata"]) == REDIS_STREAMS_METADATA, name
            assert all(isinstance(value, str) for value in trigger["metadata"].values()), "metadata holds strings"


def test_the_keda_check_refuses_a_misspelled_field_and_a_wrong_type(keda_validator: jsonschema.Draft7Validator) -> None:
    scaled = scaled_objects(render("cpu"))["asr"]
    misspelled = json.loads(json.dumps(scaled))
    misspelled["spec"]["maxReplicas"] = 3
    assert any("maxReplicas" in error for error in keda_errors(keda_validator, misspelled))
    wrong = json.loads(json.dumps(scaled))
    wrong["spec"]["minReplicaCount"] = "one"
    assert keda_errors(keda_validator, wrong)


# --- what they run is what the code has -----------------------------------------------------------------------


def test_the_scaled_objects_read_the_streams_and_groups_the_workers_use(overlay: tuple[str, list[Object]]) -> None:
    """Stream {prefix}:{kind} (and the kind's interim stream), group {kind}: pipeline/routes.py, workers/base.py."""
    _, objects = overlay
    scaled = scaled_objects(objects)
    assert set(scaled) == set(WORKER_KINDS)
    for kind, obj in scaled.items():
        streams = [t["metadata"]["stream"] for t in obj["spec"]["triggers"]]
        own = [kind, *([INTERIM_STREAMS[kind]] if kind in INTERIM_STREAMS else [])]
        assert streams == [f"{STREAM_PREFIX}:{name}" for name in own]
        assert {t["metadata"]["consumerGroup"] for t in obj["spec"]["triggers"]} == {kind}
        target = one(objects, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
        assert containers(target)[0]["command"] == ["babelroom", "worker", kind]


def test_keda_reaches_the_redis_the_workers_use(overlay: tuple[str, list[Object]]) -> None:
    """KEDA connects from its own namespace, to REDIS_ADDRESS read from the target's environment: REDIS_URL's
    host and port, with this namespace in the name."""
    _, objects = overlay
    settings, workers = config_map_data(objects, "babelroom-settings"), config_map_data(objects, "babelroom-workers")
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", settings["REDIS_URL"])
    assert match, settings["REDIS_URL"]
    assert workers["REDIS_ADDRESS"] == f"{match[1]}:{match[2]}"
    service = one(objects, "Service", "redis")
    assert match[1] == f"redis.{service['metadata']['namespace']}.svc"
    assert int(match[2]) == service["spec"]["ports"][0]["port"]
    for obj in scaled_objects(objects).values():
        assert {t["metadata"]["addressFromEnv"] for t in obj["spec"]["triggers"]} == {"REDIS_ADDRESS"}


def lag_count(seconds_per_segment: float, segments: int = 1) -> int:
    return max(1, math.floor(segments / seconds_per_segment * QUEUE_BUDGET_S))


def expected_lag_counts(overlay: str) -> dict[str, int]:
    """lagCount per kind from the benchmarks' figures: the CPU engines' (bench latency, bench lipsync) and, on
    GPUs, bench gpu's at the GPU overlay's batch size."""
    stage_s = json.loads((ROOT / "results" / "latency.json").read_text())["stage_mean_s"]
    lipsync = json.loads((ROOT / "results" / "lipsync.json").read_text())
    warp = next(row for row in lipsync["rows"] if row["engine"] == "cpu")
    counts = {kind: lag_count(stage_s[kind]) for kind in ("asr", "mt", "tts")}
    counts["lipsync"] = lag_count(warp["stage_ms_per_frame"] * warp["frames"] / 1000)
    if overlay == "gpu":
        gpu = json.loads((ROOT / "results" / "gpu.json").read_text())
        for row in gpu["stages"]:
            if row["batch"] == GPU_BATCH:
                counts[row["stage"]] = lag_count(row["seconds"], GPU_BATCH)
    return counts


def test_the_lag_per_replica_comes_from_the_benchmarks(overlay: tuple[str, list[Object]]) -> None:
    name, objects = overlay
    expected = expected_lag_counts(name)
    for kind, obj in scaled_objects(objects).items():
        counts = {int(t["metadata"]["lagCount"]) for t in obj["spec"]["triggers"]}
        assert counts == {expected[kind]}, f"{name} {kind}: lagCount {counts}, the figures give {expected[kind]}"
        assert 1 <= obj["spec"]["minReplicaCount"] < obj["spec"]["maxReplicaCount"]
    if name == "gpu":
        assert config_map_data(objects, "babelroom-workers")["BABELROOM_BATCH_SIZE"] == str(GPU_BATCH)


def test_the_gpu_workers_ask_for_one_gpu_on_the_gpu_pool(overlay: tuple[str, list[Object]]) -> None:
    name, objects = overlay
    for kind in WORKER_KINDS:
        deployment = one(objects, "Deployment", kind)
        spec, container = deployment["spec"]["template"]["spec"], containers(deployment)[0]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        on_gpu = name == "gpu" and kind in GPU_KINDS
        assert gpus == (1 if on_gpu else None), f"{name} {kind}"
        assert container["image"] == ("babelroom:gpu" if on_gpu else "babelroom:cpu")
        assert ("nvidia.com/gpu.present" in spec.get("nodeSelector", {})) == on_gpu
        assert any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", [])) == on_gpu
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert ("/models" in mounts) == on_gpu and (not on_gpu or mounts["/models"]["readOnly"])


def test_the_worker_readiness_is_its_heartbeat(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    for kind in WORKER_KINDS:
        argv = containers(one(objects, "Deployment", kind))[0]["readinessProbe"]["exec"]["command"]
        assert argv == ["babelroom", "health", "worker", kind]
        assert parser().parse_args(argv[1:]).run is run_health


def test_each_media_node_is_one_pod_per_kubernetes_node_on_host_networking(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    media = one(objects, "StatefulSet", "media")
    spec = media["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == media["spec"]["selector"]["matchLabels"]
    assert media["spec"]["serviceName"] == "media-nodes"
    headless = one(objects, "Service", "media-nodes")
    assert headless["spec"]["clusterIP"] == "None"
    settings = config_map_data(objects, "babelroom-settings")
    annotations = headless["metadata"]["annotations"]
    assert annotations["external-dns.alpha.kubernetes.io/hostname"] == settings["BABELROOM_NODES_DOMAIN"]


def test_the_media_node_runs_babelroom_node_named_after_its_pod(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    (node,) = containers(one(objects, "StatefulSet", "media"))
    args = parser().parse_args(node["command"][1:])
    assert node["command"][:2] == ["babelroom", "node"]
    assert args.node_id == "$(POD_NAME)" and args.public_host == "$(POD_NAME).$(BABELROOM_NODES_DOMAIN)"
    env = {e["name"]: e for e in node["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["BABELROOM_JANUS_ICE_INTERFACES"]["value"] == "$(HOST_IP)"  # not the CNI's interfaces
    assert env["BABELROOM_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "babelroom-secrets",
                                                                          "key": "token-secret"}  # fmt: skip
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports == {"http": args.port, "https": int(config_map_data(objects, "babelroom-settings")[
        "BABELROOM_HTTPS_PORT"])}  # fmt: skip


def test_a_stopping_media_node_drains_for_as_long_as_a_meeting(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    media = one(objects, "StatefulSet", "media")
    (node,) = containers(media)
    shell = node["lifecycle"]["preStop"]["exec"]["command"]
    assert shell[:2] == ["sh", "-c"]
    argv = [word.replace("$POD_NAME", "media-0") for word in shlex.split(shell[2])]
    assert argv[:2] == ["babelroom", "drain"] and parser().parse_args(argv[1:]).node == "media-0"
    grace_s = float(config_map_data(objects, "babelroom-settings")["BABELROOM_DRAIN_GRACE_S"])
    assert grace_s >= 3600, "a meeting's length"
    assert media["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace_s + DRAIN_MARGIN_S
    readiness = node["readinessProbe"]["exec"]["command"]
    assert readiness[:3] == ["babelroom", "health", "gateway"] and parser().parse_args(readiness[1:]).run is run_health
    assert (
        parser().parse_args(readiness[1:]).url
        == f"http://127.0.0.1:{parser().parse_args(node['command'][1:]).port}/healthz"
    )


def test_janus_media_ports_are_a_narrow_documented_range(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    first, last = map(int, config_map_data(objects, "babelroom-settings")["BABELROOM_JANUS_RTP_PORTS"].split("-"))
    assert 1024 < first < last <= 65535 and last - first + 1 <= 2000
    assert f"{first}-{last}" in (ROOT / "docs" / "deployment.md").read_text()


def test_every_setting_the_manifests_pass_is_one_the_code_reads(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    passed = {key for o in named(objects, "ConfigMap") if not o["metadata"]["name"].startswith("redis-config")
              for key in o.get("data", {})}  # fmt: skip
    for workload in [*named(objects, "Deployment"), *named(objects, "StatefulSet")]:
        passed |= {e["name"] for c in containers(workload) for e in c.get("env", [])}
    unread = passed - settings_read_by_the_code() - MANIFEST_ONLY
    assert unread == set(), f"the manifests set what nothing reads: {unread}"


def test_nothing_downloads_models_unless_allowed(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    assert config_map_data(objects, "babelroom-settings")["BABELROOM_ALLOW_DOWNLOAD"] == "0"


# --- Redis: one set of settings for compose and Kubernetes ---------------------------------------------------


def redis_conf() -> dict[str, str]:
    lines = (ROOT / "deploy" / "redis" / "redis.conf").read_text().splitlines()
    pairs = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value.strip('"') for key, value in pairs}


def test_redis_keeps_its_append_only_file_on_a_volume_claim(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    redis = one(objects, "StatefulSet", "redis")
    (container,) = containers(redis)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    conf = redis_conf()
    assert container["args"] == ["redis-server", "/etc/redis/redis.conf"] and "command" not in container
    assert {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]} == {mounts[conf["dir"]]}
    shipped = config_map_data(objects, "redis-config")["redis.conf"]
    assert shipped == (ROOT / "deploy" / "redis" / "redis.conf").read_text()
    assert re.fullmatch(r"redis:7\.\d+-alpine", container["image"]), "Redis 7 or later: KEDA reads the lag"


def test_compose_and_babelroom_up_give_redis_the_same_settings() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["redis"]
    assert compose["command"][0] == "redis-server"
    assert f"./deploy/redis/redis.conf:{compose['command'][1]}:ro" in compose["volumes"]
    argv = redis_argv(6379, "/data")[1:]
    embedded = dict(zip(argv[0::2], argv[1::2], strict=True))
    for key, value in conf.items():
        if key != "dir":
            assert embedded[f"--{key}"] == value, key


def test_the_vendored_keda_crd_names_its_release() -> None:
    readme = (KEDA_CRD.parent / "README.md").read_text()
    assert re.search(r"tag v2\.\d+\.\d+, commit [0-9a-f]{40}", readme)
    assert "Apache License" in (KEDA_CRD.parent / "LICENSE").read_text()
    assert Path(KEDA_CRD).read_text().count("kind: ScaledObject") == 1


def test_the_podman_play_runs_the_cpu_overlay_and_names_what_it_leaves_out() -> None:
    """What `make image-test` plays (tests/kube.py): the pods' workloads as Deployments, every other kind named."""
    played, notes = for_podman_play(render("cpu"))
    assert {o["metadata"]["name"] for o in named(played, "Deployment")} == {"redis", "media", *WORKER_KINDS}
    assert {"Service/redis: not run", "Service/media: not run"} <= set(notes)
    assert {f"ScaledObject/{kind}: not run" for kind in WORKER_KINDS} <= set(notes)
    assert any(note.startswith("StatefulSet/media: run as a Deployment") for note in notes)
    assert {o["kind"] for o in played} <= PODMAN_RUNS
    text = yaml.safe_dump_all(played)
    assert "$(" not in text and "hostNetwork" not in text, "podman 4.3 expands no $(VAR); no host networking"
    (node,) = containers(one(played, "Deployment", "media"))
    assert f"--public-host={play_pod_name('media')}.{PLAY_DOMAIN}" in node["command"]
    assert parser().parse_args(node["command"][1:]).public_host == f"{play_pod_name('media')}.{PLAY_DOMAIN}"
    assert config_map_data(played, "babelroom-settings")["REDIS_URL"].startswith(f"redis://{play_pod_name('redis')}.")


def test_the_coturn_component_relays_to_the_media_nodes_only_with_the_shared_secret() -> None:
    objects = render("gpu", components=("coturn",))
    coturn = one(objects, "DaemonSet", "coturn")
    kubernetes_validate.validate(coturn, KUBERNETES_VERSION, strict=True)
    spec = coturn["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["nodeSelector"] == {"babelroom.io/turn": "true"}
    (container,) = containers(coturn)
    assert parser().parse_args(container["command"][1:]).relay_to == "$(BABELROOM_TURN_RELAY_TO)"
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["BABELROOM_TURN_SECRET"]["secretKeyRef"] == {"name": "babelroom-secrets", "key": "turn-secret"}
    settings = config_map_data(objects, "babelroom-settings")
    assert settings["BABELROOM_TURN_URLS"].startswith("turn:") and settings["BABELROOM_TURN_RELAY_TO"]
    assert "DaemonSet" not in {o["kind"] for o in render("gpu")}, "optional: only where an overlay adds it"
