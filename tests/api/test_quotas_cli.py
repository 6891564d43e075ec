"""``control-plane quotas list`` reads what ``quotas set`` wrote, on a real control plane's
database (the CLI's twin of ``GET /api/quotas``)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.processes import ControlPlaneProcess


def test_quotas_list_shows_the_tenant_and_its_keys(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(
        tmp_path / "cp", f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}", shared_pool=False
    ).start()
    try:
        cp.cli("keys", "create", "quota-key", "--tenant", "qt")
        cp.cli("quotas", "set", "--tenant", "qt", "--tokens-per-minute", "1000")
        listed = json.loads(cp.cli("quotas", "list", "--tenant", "qt", "--json"))
        assert listed["tenant"] == {"tokens_per_minute": 1000, "tokens_per_day": None}
        [key] = listed["keys"]
        assert key["name"] == "quota-key" and key["max_concurrent"] is None
        cp.cli("quotas", "set", "--tenant", "qt", "--key", key["id"], "--max-concurrent", "3")
        again = json.loads(cp.cli("quotas", "list", "--tenant", "qt", "--json"))
        assert again["keys"][0]["max_concurrent"] == 3
        table = cp.cli("quotas", "list", "--tenant", "qt")
        assert "(tenant)" in table and "1,000" in table and key["id"] in table
    finally:
        cp.stop()
