"""Tables stay readable in an 80-column terminal and when piped (issue 26).

``control-plane fairness suites`` used to collapse every column but the 64-character hash to
nothing, and the probe report cut group and outcome names to five characters.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

from rich.console import Console

from outpost.control_plane.probes import build_report, builtin_suite
from outpost.control_plane.probes.suites import ExpansionOptions
from outpost.control_plane.probes.tables import report_renderable

from .fakes import FakeEngine
from .test_probe_report import runner_for


def test_suites_table_shows_every_column_in_80_columns_when_piped() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    cli = [sys.executable, "-m", "outpost.control_plane.cli", "fairness", "suites"]
    table = subprocess.run(cli, env=env, capture_output=True, text=True, check=True).stdout
    rows = [
        json.loads(line)
        for line in subprocess.run(
            [*cli, "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]
    assert rows
    assert all(len(line) <= 80 for line in table.splitlines()), table
    words = set(re.findall(r"[\w.-]+", table))
    for row in rows:
        assert {row["name"], row["id"], row["version"], str(row["prompts"])} <= words, table
        assert row["sha256"][:12] in table and len(row["sha256"]) == 64
        for attribute in row["sets_per_group"]:
            assert attribute in words, (attribute, table)


async def test_probe_report_keeps_group_and_outcome_names_whole_in_80_columns() -> None:
    run = await runner_for(FakeEngine()).run(
        builtin_suite(), ExpansionOptions(max_prompts_per_group=2)
    )
    report = build_report(run)
    buffer = io.StringIO()
    Console(width=80, file=buffer, color_system=None).print(report_renderable(report))
    text = buffer.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    words = set(re.findall(r"[\w-]+", text))
    longest = max((g for r in report.attributes.values() for g in r.groups), key=len)
    assert len(longest) > 5  # the suite has names the old table cut
    for result in report.attributes.values():
        assert set(result.groups) <= words, (set(result.groups) - words, text[:3000])
        assert set(result.outcomes) <= words, (set(result.outcomes) - words, text[:3000])
    assert text.count(" flag ") == len(report.attributes)  # the verdict column, in every table
