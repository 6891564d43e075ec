"""scripts/bundle.sh: an air-gapped bundle installs with no index (docs/deploy.md).

The test bundle holds Outpost's own wheel only (``--no-deps``, no model package), so it
downloads nothing; the install runs with pip's index pointed at a closed port and the
machine's pip configuration ignored, so only the bundle's wheels can satisfy it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)

# Whatever the machine's pip is told, the install may not reach any index.
OFFLINE = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # discard port: nothing listens
    "PIP_FIND_LINKS": "",
    "PIP_NO_INPUT": "1",
}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "outpost-bundle"
    built = _run(
        ["bash", "scripts/bundle.sh", "--out", str(out), "--no-deps", "--model-package", "none"],
        env={"PYTHON": sys.executable},
    )
    assert built.returncode == 0, built.stderr
    return out


def test_the_bundle_holds_the_wheel_its_manifest_and_checksums(bundle: Path) -> None:
    wheels = sorted(p.name for p in (bundle / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].startswith("outpost-") and wheels[0].endswith(".whl")
    manifest = dict(
        line.split("=", 1) for line in (bundle / "BUNDLE").read_text().splitlines() if line
    )
    assert manifest["outpost_wheel"] == wheels[0]
    assert manifest["no_deps"] == "1"
    sums = (bundle / "SHA256SUMS").read_text()
    assert f"wheels/{wheels[0]}" in sums and "install.sh" in sums
    check = subprocess.run(
        ["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout


def test_it_installs_offline_into_a_throwaway_venv(bundle: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = _run(
        ["bash", str(bundle / "install.sh"), str(venv)], env={**OFFLINE, "PYTHON": sys.executable}
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert (venv / "bin" / "control-plane").is_file()
    assert (venv / "bin" / "runner").is_file()
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; d = m.distribution('outpost'); "
            "print(d.version); print(sum(1 for f in d.files if str(f) == 'outpost/sdk/otel.py'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    version, has_module = probe.stdout.split()
    assert version == _project_version()
    assert has_module == "1"


def test_a_damaged_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(bundle), str(copy)], check=True)
    wheel = next((copy / "wheels").iterdir())
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    done = _run(
        ["bash", str(copy / "install.sh"), str(tmp_path / "venv")],
        env={**OFFLINE, "PYTHON": sys.executable},
    )
    assert done.returncode != 0
    assert "damaged" in done.stderr
    assert not (tmp_path / "venv").exists()


def _project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
