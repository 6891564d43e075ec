"""The tunnel benchmark still measures a tunnel: it reads the control plane's stream events as
the relay does, so a change of their shape must not leave it timing an empty path (it once
reported 0 tokens through the tunnel, as nan, and nobody saw)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_delivers_tokens_through_the_tunnel(tmp_path: Path) -> None:
    out = tmp_path / "tunnel.json"
    done = subprocess.run(
        [sys.executable, "bench/bench_tunnel.py", "--rounds", "1", "--phase-s", "0.5"]
        + ["--no-write", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 3
    for row in rows:
        for path in ("direct", "tunnel"):
            assert row[path]["tok_s"] > 0 and row[path]["errors"] == 0, (path, row)
