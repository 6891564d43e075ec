"""docs/fairness.md cannot drift from the code: every public name and every
report setting must be documented, and so must the live tenant metrics."""

from __future__ import annotations

from pathlib import Path

from outpost.control_plane import probes
from outpost.control_plane.probes.report import ReportSettings

DOC = (Path(__file__).parents[2] / "docs" / "fairness.md").read_text(encoding="utf-8")


def test_every_public_name_is_documented():
    missing = [name for name in probes.__all__ if name not in DOC]
    assert not missing, f"undocumented in docs/fairness.md: {missing}"


def test_every_report_setting_is_documented():
    missing = [f for f in ReportSettings.model_fields if f != "correction" and f not in DOC]
    assert not missing, missing


def test_tenant_section_documents_the_live_metrics():
    assert "## Tenant service fairness" in DOC
    section = DOC.split("## Tenant service fairness", 1)[1]
    for name in (
        "GET /api/fairness/service",
        "jain_index",
        "worst_normalized_share",
        "max_service_gap",
        "record_rejection",
        "mark_backlogged",
        "fairness_window_s",
    ):
        assert name in section, name


def test_every_cli_option_and_api_route_is_documented():
    import typer.main

    from outpost.control_plane.api.fairness import router
    from outpost.control_plane.probes.cli import fairness_app

    command = typer.main.get_command(fairness_app)
    options = [opt for param in command.commands["run"].params for opt in param.opts]
    missing = [opt for opt in options if f"`{opt}`" not in DOC]
    assert not missing, f"fairness run options undocumented: {missing}"
    paths = [route.path for route in router.routes]
    missing = [path for path in paths if path not in DOC]
    assert not missing, f"fairness API routes undocumented: {missing}"
