"""docs/cost.md cannot drift: every cost, budget and scheduling setting, endpoint
and CLI command, and every hello cost flag of the runner, is documented."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from outpost.control_plane.budgets_cli import budgets_app
from outpost.control_plane.settings import Settings

DOC = (Path(__file__).parents[2] / "docs" / "cost.md").read_text(encoding="utf-8")


def test_settings_are_documented() -> None:
    ours = [
        f for f in Settings.model_fields if f.startswith(("scheduler_", "budget_", "fairness_"))
    ]
    assert ours and not [f for f in ours if f"`{f}`" not in DOC]


def test_endpoints_and_cli_are_documented() -> None:
    for text in (
        "GET /api/usage",
        "GET /api/budgets",
        "POST /api/budgets",
        "DELETE /api/budgets/{id}",
        "GET /api/fairness/service",
        "X-Outpost-Budget-Warning",
        "queue_full",
        "queue_timeout",
    ):
        assert text in DOC, text
    commands = [c.name for c in budgets_app.registered_commands]
    assert commands and all(f"control-plane budgets {c}" in DOC for c in commands)
    assert CliRunner().invoke(budgets_app, ["set", "--help"]).exit_code == 0


def test_runner_cost_flags_are_documented() -> None:
    for flag in ("--usd-per-hour", "--usd-per-kwh", "--watts", "--pue", "--hardware-class"):
        assert flag in DOC, flag
