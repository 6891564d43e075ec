"""docs/fairness.md cannot drift from the code: every public name and every
report setting must be documented, and the lead's section must stay."""

from __future__ import annotations

from pathlib import Path

from control_plane import fairness
from control_plane.fairness.report import ReportSettings

DOC = (Path(__file__).parents[2] / "docs" / "fairness.md").read_text(encoding="utf-8")


def test_every_public_name_is_documented():
    missing = [name for name in fairness.__all__ if name not in DOC]
    assert not missing, f"undocumented in docs/fairness.md: {missing}"


def test_every_report_setting_is_documented():
    missing = [f for f in ReportSettings.model_fields if f != "correction" and f not in DOC]
    assert not missing, missing


def test_tenant_section_is_kept_for_the_lead():
    assert "## Tenant service fairness" in DOC
    assert "<!-- tenant fairness: maintained by lead -->" in DOC
