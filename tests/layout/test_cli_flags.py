"""``control-plane serve`` and ``up`` take their flags from Settings, declared once (issue 21):
every setting is a flag, secrets are refused on the command line, bad values exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from outpost.control_plane.cli import SECRET_FLAGS
from outpost.control_plane.settings import Settings


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outpost.control_plane.cli", *args],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["serve", "up"])
def test_every_setting_is_a_flag(command: str, tmp_path: Path) -> None:
    helped = _cli(command, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    missing = [
        name for name in Settings.model_fields if f"--{name.replace('_', '-')}" not in helped.stdout
    ]
    assert not missing, f"settings without a flag on {command}: {missing}"


def test_secret_settings_are_refused_on_the_command_line(tmp_path: Path) -> None:
    assert "--metrics-token" in SECRET_FLAGS and "--oidc-client-secret" in SECRET_FLAGS
    for flag in SECRET_FLAGS:
        refused = _cli("serve", f"{flag}=hunter2", cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "not accepted on the command line" in refused.stderr
        assert "OUTPOST_" in refused.stderr and "hunter2" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--port", "http"], "--port"),
        (["--max-tokens-limit", "0"], "--max-tokens-limit"),
        (["--tls-client-auth", "sometimes"], "--tls-client-auth"),
    ],
)
def test_a_bad_value_exits_2_naming_its_flag(args: list[str], flag: str, tmp_path: Path) -> None:
    refused = _cli("serve", *args, cwd=tmp_path)
    assert refused.returncode == 2
    assert flag in refused.stderr
    assert "Traceback" not in refused.stderr
