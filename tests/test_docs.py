"""Documentation that cannot drift from the code."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

from outpost.sdk import protocol

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_is_generated_from_settings() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_says_what_it_does() -> None:
    from outpost.control_plane.settings import Settings
    from outpost.runner.settings import RunnerSettings

    bare = [
        f"{cls.__name__}.{name}"
        for cls in (Settings, RunnerSettings)
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert not bare, f"settings without a description: {bare}"


def test_protocol_doc_names_every_frame_and_close_code() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    frame_types = [
        typing.get_args(cls.model_fields["type"].annotation)[0]
        for cls in typing.get_args(typing.get_args(protocol.Frame)[0])
    ]
    assert frame_types
    missing = [t for t in frame_types if f"`{t}`" not in text]
    assert not missing, f"frames missing from docs/protocol.md: {missing}"
    codes = [str(int(c)) for c in protocol.CloseCode]
    assert not [c for c in codes if c not in text]


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "./scripts/up" in head and "./scripts/test" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci
