"""docs/audit.md cannot drift from the code: helpers, settings, commands and result fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import outpost.sdk.audit
from outpost.control_plane import audit
from outpost.control_plane.audit.cli import audit_app, keys_app
from outpost.control_plane.settings import Settings

DOC = (Path(__file__).parents[2] / "docs" / "audit.md").read_text(encoding="utf-8")


def test_every_public_helper_is_documented() -> None:
    missing = [n for n in [*audit.__all__, *outpost.sdk.audit.__all__] if n not in DOC]
    assert not missing, f"undocumented in docs/audit.md: {missing}"


def test_every_audit_setting_is_documented() -> None:
    missing = [f for f in Settings.model_fields if f.startswith("audit_") and f not in DOC]
    assert not missing, missing


def test_every_command_is_documented() -> None:
    commands = [f"audit {c.name}" for c in audit_app.registered_commands]
    commands += [f"audit keys {c.name}" for c in keys_app.registered_commands]
    missing = [c for c in commands if f"control-plane {c}" not in DOC]
    assert not missing, missing


def test_every_verify_result_field_is_documented() -> None:
    missing = [
        f.name
        for f in dataclasses.fields(outpost.sdk.audit.VerifyResult)
        if f"`{f.name}`" not in DOC
    ]
    assert not missing, missing
