"""The wheel as users get it: built from a clean copy of the checkout, installed with no
access to the source tree, then imported and run (issue 21, "one import root").

The throwaway environment sees the project's dependencies through a path entry to this
venv's site-packages, but not its editable install: ``outpost`` there can only be the wheel.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the wheel must carry besides modules: templates, static files, migrations, probe suites.
DATA = (
    "outpost/py.typed",
    "outpost/web/templates/",
    "outpost/web/static/",
    "outpost/migrations/versions/",
    "outpost/migrations/script.py.mako",
    "outpost/control_plane/probes/suites/default-v1.json",
)
_SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", "harness"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy, because setuptools reuses ./build: a stale build there once put modules that had
    # moved away into the wheel.
    src = tmp_path_factory.mktemp("src") / "outpost"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_SKIP)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("outpost-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env_dir = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies, appended after the wheel's own site-packages; .pth files of that folder
    # (the editable install's among them) are not processed, so the checkout stays out of reach.
    Path(site, "outpost-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield python


def _run(python: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,  # not the checkout: python -m puts the working directory first on sys.path
        env={k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_adds_one_top_level_name_and_carries_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"outpost", "outpost-0.1.0.dist-info"}
    for item in DATA:
        assert any(n.startswith(item) for n in names), f"{item} missing from the wheel"
    assert not any(
        n.startswith(("outpost/tests", "outpost/bench", "outpost/harness")) for n in names
    )


def test_every_module_in_the_wheel_is_in_the_checkout(wheel: Path) -> None:
    modules = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")]
    stray = [n for n in modules if not (ROOT / n).is_file()]
    assert not stray, f"modules in the wheel that the checkout does not have: {stray[:10]}"
    assert "outpost/control_plane/app.py" in modules


def test_the_installed_wheel_imports_and_runs_its_commands(installed: Path, tmp_path: Path) -> None:
    code = (
        "import outpost, outpost.control_plane.app, outpost.runner.agent\n"
        "from outpost import Client\n"
        "print(outpost.__file__)\n"
    )
    probe = _run(installed, "-c", code, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(installed.parent.parent), probe.stdout
    for module in ("outpost.control_plane.cli", "outpost.runner.cli"):
        helped = _run(installed, "-m", module, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr
    serve = _run(installed, "-m", "outpost.control_plane.cli", "serve", "--help", cwd=tmp_path)
    assert serve.returncode == 0 and "--tunnel-ping-interval-s" in serve.stdout, serve.stderr


def test_the_installed_wheel_migrates_a_database(installed: Path, tmp_path: Path) -> None:
    migrated = _run(
        installed,
        "-m",
        "outpost.control_plane.cli",
        "migrate",
        cwd=tmp_path,
        OUTPOST_STATE_DIR=str(tmp_path / "state"),
    )
    assert migrated.returncode == 0, migrated.stderr
    (db,) = (tmp_path / "state").glob("*.db")
    with sqlite3.connect(db) as conn:  # the migrations came from the wheel's package data
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    heads = {p.name.split("_")[1] for p in (ROOT / "migrations" / "versions").glob("*_*.py")}
    assert revision in heads
