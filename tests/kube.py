"""The Kubernetes manifests (deploy/k8s) as the tests and `make image-test` read them: rendered by kubectl's built-in
Kustomize, each object a dict.

`python -m tests.kube play OVERLAY` prints the overlay as podman 4.3's `kube play` can run it, for `.ci/image/test`,
and names on stderr what it leaves out or changes:
- kinds: podman runs Pods, Deployments, PersistentVolumeClaims and ConfigMaps; a StatefulSet becomes the
  Deployment of its template (its claim templates, PersistentVolumeClaims), every other kind is not run;
- the cluster's names: a pod is reached by its podman name (`redis-pod-0.dns.podman`), as no Service runs;
- host networking is off: the pods get a podman network of their own, so test media never reaches the host's
  addresses, and Janus gathers on the pod's interface (eth0) in place of the Kubernetes node's address;
- `$(VAR)` in commands and settings is expanded here, as Kubernetes does and podman 4.3 does not;
- TLS is left out (podman 4.3 crashes on a secret volume): the participants speak plain HTTP on that network;
- a pod that mounts a ConfigMap runs as root: podman 4.3 mounts it as a folder only root can read;
- the Secret is made by the caller as a podman secret; hooks and probes are Kubernetes' own, not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.31.0"  # the schemas the objects are validated against (kubernetes-validate)
PODMAN_RUNS = {"Pod", "Deployment", "PersistentVolumeClaim", "ConfigMap", "Secret"}  # podman 4.3's kube play

Object = dict[str, Any]


def kubectl() -> str:
    """kubectl beside this Python (where `make test` puts one when the machine has none), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl is missing: `make test` installs it (Makefile: kubectl)")
    return found


def render(overlay: str, components: Sequence[str] = ()) -> list[Object]:
    """`kubectl kustomize deploy/k8s/overlays/OVERLAY`, parsed; with `components` (deploy/k8s/components/NAME),
    as an overlay that adds them renders it."""
    if not components:
        return kustomize(K8S / "overlays" / overlay)
    with tempfile.TemporaryDirectory() as folder:
        up = Path(os.path.relpath(K8S, folder))  # Kustomize takes no absolute paths
        kustomization = {"resources": [str(up / "overlays" / overlay)],
                         "components": [str(up / "components" / name) for name in components]}  # fmt: skip
        (Path(folder) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(Path(folder))


def kustomize(folder: Path) -> list[Object]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def named(objects: Iterable[Object], kind: str, name: str | None = None) -> list[Object]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[Object], kind: str, name: str) -> Object:
    found = named(objects, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def containers(workload: Object) -> list[Object]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_map_data(objects: list[Object], name_prefix: str) -> dict[str, str]:
    """The data of the generated ConfigMap `name_prefix-<hash>`."""
    maps = [o for o in named(objects, "ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == name_prefix]
    assert len(maps) == 1, f"ConfigMap {name_prefix}: {len(maps)} found"
    data: dict[str, str] = maps[0].get("data", {})
    return data


PLAY_DOMAIN = "dns.podman"  # the DNS domain of a podman network: a pod is POD.dns.podman
PLAY_INTERFACE = "eth0"  # a pod's interface on its podman network
PLAY_IMAGES = {"redis:7.2-alpine": "localhost/babelroom-redis:bookworm", "babelroom:cpu": "localhost/babelroom:cpu"}
NOT_RUN_FIELDS = ("lifecycle", "readinessProbe")  # Kubernetes' own: podman 4.3 does not run them
VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def play_pod_name(workload: str) -> str:
    return f"{workload}-pod-0"  # podman 4.3 names a Deployment's pod so


def for_podman_play(objects: list[Object]) -> tuple[list[Object], list[str]]:
    """The objects podman runs (see the module's docstring), and what was left out or changed, one line each."""
    played: list[Object] = []
    notes: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "StatefulSet":
            played += stateful_set_as_deployment(obj)
            notes.append(f"StatefulSet/{name}: run as a Deployment of its pod template (pod {play_pod_name(name)})")
        elif kind in PODMAN_RUNS and kind != "Secret":
            played.append(obj)
        else:
            notes.append(f"{kind}/{name}: not run")
    settings = {}
    for obj in named(played, "ConfigMap"):
        data = obj.get("data", {})
        if "REDIS_URL" in data:
            redis = one(objects, "Service", "redis")
            data["REDIS_URL"] = f"redis://{play_pod_name('redis')}.{PLAY_DOMAIN}:{redis['spec']['ports'][0]['port']}/0"
        if "BABELROOM_NODES_DOMAIN" in data:
            data["BABELROOM_NODES_DOMAIN"] = PLAY_DOMAIN
        settings[obj["metadata"]["name"]] = data
    for deployment in named(played, "Deployment"):
        notes += play_pod(deployment, settings)
    return played, notes


def play_pod(deployment: Object, settings: dict[str, dict[str, str]]) -> list[str]:
    name, spec = deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
    notes = []
    if spec.pop("hostNetwork", False):
        notes.append(f"Deployment/{name}: host networking off (a podman network of its own)")
    spec.pop("dnsPolicy", None)
    spec["volumes"] = [v for v in spec.get("volumes", []) if "secret" not in v]
    if any("configMap" in v for v in spec["volumes"]):
        spec["securityContext"] = {"runAsUser": 0, "runAsGroup": 0}
        notes.append(f"Deployment/{name}: runs as root (podman 4.3 mounts a ConfigMap as a folder only root reads)")
    mounts = {v["name"] for v in spec["volumes"]}
    for container in spec["containers"]:
        container["image"] = PLAY_IMAGES.get(container["image"], container["image"])
        notes += [f"Deployment/{name}: {field} not run" for field in NOT_RUN_FIELDS if container.pop(field, None)]
        container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] in mounts]
        environment = {
            k: v for ref in container.get("envFrom", []) for k, v in settings[ref["configMapRef"]["name"]].items()
        }
        container["env"] = [play_variable(v, name, settings, environment) for v in container.get("env", [])
                            if not dropped_in_play(v)]  # fmt: skip
        for field in ("command", "args"):
            if field in container:
                container[field] = [expand(word, environment) for word in container[field]]
    return notes


def dropped_in_play(variable: Object) -> bool:
    """TLS (no certificate in the play) and the Kubernetes node's address (no such node)."""
    field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    return bool(variable["name"].startswith("BABELROOM_TLS_") or field == "status.hostIP")


def play_variable(
    variable: Object, workload: str, settings: dict[str, dict[str, str]], environment: dict[str, str]
) -> Object:
    """One `env` entry as Kubernetes would give it, a plain value where podman 4.3 would not; adds it to
    `environment`, for the $(VAR)s after it."""
    name, source = variable["name"], variable.get("valueFrom", {})
    if name == "BABELROOM_JANUS_ICE_INTERFACES":
        value = PLAY_INTERFACE
    elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
        value = play_pod_name(workload)
    elif "configMapKeyRef" in source:
        value = settings[source["configMapKeyRef"]["name"]][source["configMapKeyRef"]["key"]]
    elif "value" in variable:
        value = expand(variable["value"], environment)
    else:
        return variable  # a secret: podman reads it from its own secret
    environment[name] = value
    return {"name": name, "value": value}


def expand(text: str, environment: dict[str, str]) -> str:
    """Kubernetes' $(VAR): the variable's value where the container has it, else the text as it is."""
    return VARIABLE.sub(lambda m: environment.get(m[1], m[0]), text)


def stateful_set_as_deployment(stateful_set: Object) -> list[Object]:
    """The Deployment of a StatefulSet's pod template, one replica, and a PersistentVolumeClaim per claim template
    (named as the StatefulSet's first pod's would be: CLAIM-NAME-0)."""
    name = stateful_set["metadata"]["name"]
    spec = stateful_set["spec"]
    template = spec["template"]
    claims = []
    for claim in spec.get("volumeClaimTemplates", []):
        claim_name = f"{claim['metadata']['name']}-{name}-0"
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim_name},
                       "spec": claim["spec"]})  # fmt: skip
        template["spec"].setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
        )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": stateful_set["metadata"].get("labels", {})},
        "spec": {"replicas": 1, "selector": spec["selector"], "template": template},
    }
    return [*claims, deployment]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "play" or argv[1] not in OVERLAYS:
        print("usage: python -m tests.kube play cpu|gpu", file=sys.stderr)
        return 2
    played, notes = for_podman_play(render(argv[1]))
    print(yaml.safe_dump_all(played, sort_keys=False), end="")
    print("\n".join(notes), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
