"""``control-plane up`` exits non-zero, with the runner's reason, when its runner cannot start.

Before, it printed the runner's line and kept serving an empty model list: a quick start that
looked up but could answer nothing. A real ``up`` (control plane and local runner processes),
pointed at a model that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.processes import free_port


def test_up_fails_with_the_runners_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")}
    env["OUTPOST_MODEL"] = '["/nonexistent/model.gguf"]'  # the runner's setting, passed through
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost.control_plane.cli",
            "up",
            "--port",
            str(free_port()),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "the local runner stopped (exit code 2)" in out, out[-3000:]
    reason = out.split("Its last words:", 1)[1]
    assert "/nonexistent/model.gguf" in reason and "cannot start" in reason, reason
