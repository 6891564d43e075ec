"""vLLM is started by the interpreter that imports it (issue 25, bug a).

On the H100 the planner chose vLLM because ``import vllm`` worked (a ``pip install --target``
on ``PYTHONPATH``), and the launcher then ran a ``vllm`` executable from ``PATH``, which such an
install has none of: ``EngineFailed: [Errno 2] No such file or directory``. Here the same set-up
with an honest stand-in for the package (named as such: ``vllm/entrypoints/cli/main.py`` records
its argv instead of loading a model), run with the adapter's real argv and environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from outpost.runner.engines import VllmEngine
from outpost.runner.engines.base import ServedModel

ROOT = Path(__file__).resolve().parents[2]

FAKE_MAIN = """
import json, os, sys
# Stand-in for vllm.entrypoints.cli.main (the `vllm` console script's entry point).
if __name__ == "__main__":
    with open(os.environ["FAKE_VLLM_RECORD"], "w") as f:
        json.dump({"argv": sys.argv[1:], "python": sys.executable}, f)
"""


def _target_install(root: Path) -> Path:
    """A package laid out as ``pip install --target DIR`` leaves it: no bin/, no script."""
    site = root / "site"
    pkg = site / "vllm" / "entrypoints" / "cli"
    pkg.mkdir(parents=True)
    for d in (site / "vllm", site / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "main.py").write_text(FAKE_MAIN)
    return site


def test_the_planner_and_the_launcher_agree_on_a_target_install(tmp_path: Path) -> None:
    site = _target_install(tmp_path)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
        "PATH": str(empty_bin),
        "FAKE_VLLM_RECORD": str(tmp_path / "record.json"),
    }
    # The planner's test: vllm is importable by this interpreter.
    check = "from runner.planning import installed_engines as i; print('vllm' in i())"
    found = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "True"

    engine = VllmEngine(
        model="/models/SmolLM2-135M-Instruct",
        capacity=8,
        models=(ServedModel(name="SmolLM2-135M-Instruct", engine="vllm"),),
        served_model_name="SmolLM2-135M-Instruct",
    )
    spec = engine.launch_spec(8123)
    # Exactly as the supervisor spawns it: the adapter's argv, os.environ overlaid with its env.
    proc = subprocess.run(
        spec.argv, env={**env, **spec.env}, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["argv"][:2] == ["serve", "/models/SmolLM2-135M-Instruct"]
    assert record["argv"][record["argv"].index("--port") + 1] == "8123"
    assert Path(record["python"]).resolve() == Path(sys.executable).resolve()
