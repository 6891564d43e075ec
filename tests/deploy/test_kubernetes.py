"""The Kubernetes manifests (deploy/kubernetes/): valid against a current release's schemas,
complete, and naming only settings that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from outpost.control_plane.api.health import router as health_router
from outpost.control_plane.console.config import ConsoleSettings
from outpost.control_plane.settings import Settings
from outpost.runner.settings import RunnerSettings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The kubernetes-validate release whose bundled schemas the manifests must satisfy (no network
# needed).
K8S_VERSION = "1.37.0"
# Custom resources: their schemas come with their operators, so they are checked by hand below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()
KUSTOMIZATION = yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == on_disk
    assert len(KUSTOMIZATION["resources"]) == len(set(KUSTOMIZATION["resources"]))
    assert not list(KUBE.glob("*.yml")), "use .yaml: the check above would miss .yml files"


def test_the_schema_version_is_the_newest_kubernetes_validate_ships() -> None:
    # Moving to a newer release is a conscious step: bump K8S_VERSION when kubernetes-validate is
    # upgraded.
    assert kubernetes_validate.latest_version() == K8S_VERSION


@pytest.mark.parametrize(
    ("name", "doc"),
    [d for d in DOCS if (d[1]["apiVersion"], d[1]["kind"]) not in CUSTOM_KINDS],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_each_manifest_is_valid_for_a_current_kubernetes(name: str, doc: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_misspelt_field_is_caught_by_the_validation() -> None:
    deployment = _by_kind("Deployment")[0]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_service_monitor_scrapes_the_service_with_the_metrics_token() -> None:
    (monitor,) = _by_kind("ServiceMonitor")
    (service,) = _by_kind("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (
        endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        and endpoint["path"] == "/metrics"
    )
    ref = endpoint["authorization"]["credentials"]
    assert ref["key"] in _secret_keys(ref["name"])


def _secret_keys(name: str) -> set[str]:
    (secret,) = [s for s in _by_kind("Secret") if s["metadata"]["name"] == name]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def test_the_control_plane_has_replicas_probes_and_external_database_and_redis() -> None:
    (deployment,) = _by_kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = _pod_spec(deployment)["containers"]
    health_paths = {route.path for route in health_router.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in health_paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in health_paths
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert {"OUTPOST_DATABASE_URL", "OUTPOST_REDIS_URL"} <= set(from_secret)
    # Replicas share the console key and the audit key: both come from the Secret, not the pod's
    # disk.
    config = _by_kind("ConfigMap")[0]["data"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for setting in ("OUTPOST_CONSOLE_SECRET_FILE", "OUTPOST_AUDIT_KEY_FILE"):
        assert str(Path(config[setting]).parent) in mounts, setting
    # Live streams drain for up to 30 s after SIGTERM (docs/deploy.md).
    assert _pod_spec(deployment)["terminationGracePeriodSeconds"] > 30


def test_every_secret_and_config_reference_resolves() -> None:
    config_names = {c["metadata"]["name"] for c in _by_kind("ConfigMap")}
    for kind in ("Deployment", "DaemonSet", "Job"):
        for doc in _by_kind(kind):
            spec = _pod_spec(doc)
            for container in _containers(doc):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in _secret_keys(ref["name"]), (kind, env["name"])
                for source in container.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_names
                volumes = {v["name"] for v in spec.get("volumes", [])}
                assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, kind
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    keys = _secret_keys(volume["secret"]["secretName"])
                    assert {i["key"] for i in volume["secret"].get("items", [])} <= keys, volume[
                        "name"
                    ]


def _env_names(doc: dict[str, Any]) -> set[str]:
    names = set()
    for container in _containers(doc):
        names |= {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            (config,) = [
                c
                for c in _by_kind("ConfigMap")
                if c["metadata"]["name"] == source["configMapRef"]["name"]
            ]
            names |= set(config["data"])
    return {n for n in names if n.startswith("OUTPOST_")}


def _settings_env(*classes: type) -> set[str]:
    names = set()
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def test_every_setting_the_manifests_name_exists() -> None:
    control_plane = _settings_env(Settings, ConsoleSettings)
    runner = _settings_env(RunnerSettings)
    for doc in [*_by_kind("Deployment"), *_by_kind("Job")]:
        assert _env_names(doc) - control_plane == set(), doc["metadata"]["name"]
    for doc in _by_kind("DaemonSet"):
        assert _env_names(doc) - runner == set(), doc["metadata"]["name"]
    assert "OUTPOST_OIDC_ISSUER" in _env_names(_by_kind("Deployment")[0])


def test_runners_run_on_gpu_nodes_with_nvidia_gpus_and_keep_their_identity() -> None:
    (daemonset,) = _by_kind("DaemonSet")
    spec = _pod_spec(daemonset)
    assert spec["nodeSelector"]
    (runner,) = spec["containers"]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] >= 1
    env = {e["name"]: e for e in runner["env"]}
    # One one-use enrollment token per node, picked by the node's name (the downward API).
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OUTPOST_TOKEN_FILE"]["value"].endswith("/$(NODE_NAME)")
    state = next(
        m for m in runner["volumeMounts"] if m["mountPath"] == env["OUTPOST_STATE_DIR"]["value"]
    )
    volume = next(v for v in spec["volumes"] if v["name"] == state["name"])
    assert "hostPath" in volume, "the identity key must outlive the pod"
    assert not any("ports" in c for c in spec["containers"]), "runners dial out; they open no port"


def test_images_are_pinned_by_the_kustomization() -> None:
    pinned = {i["name"] for i in KUSTOMIZATION["images"]}
    used = {
        c["image"]
        for kind in ("Deployment", "DaemonSet", "Job")
        for d in _by_kind(kind)
        for c in _containers(d)
    }
    assert used == pinned


def test_docs_deploy_names_every_manifest() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    section = doc[doc.index("## Kubernetes") :]
    missing = [
        p.name
        for p in KUBE.glob("*.yaml")
        if p.name != "kustomization.yaml" and f"`{p.name}`" not in section
    ]
    assert not missing, f"docs/deploy.md's Kubernetes section does not describe {missing}"
