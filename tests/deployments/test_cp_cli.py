"""Issue 22: ``control-plane deployments`` on a real control plane's database.

Each step is one command; a running control plane's reconciler acts on what the CLI wrote
(a scripted runner on the real protocol receives the deploy and the undeploy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness.processes import ControlPlaneProcess, _tool
from outpost.sdk.protocol import DeployFrame, UndeployFrame
from tests.deployments.test_cp_reconcile import next_frame
from tests.security.rogue import RogueRunner


def test_cli_create_list_update_scale_delete(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(
        tmp_path / "cp",
        f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}",
        extra_env={"OUTPOST_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.5"},
        shared_pool=False,
    ).start()
    try:
        rogue = RogueRunner(cp, "clitenant", "static")
        ws = rogue.connect()
        made = json.loads(
            cp.cli(
                "deployments", "create", "cli-model", "--path", "smol.gguf",
                "--engine", "llama.cpp", "--option", "ctx=2048", "--option", "flash_attn=true",
                "--alias", "cli-alias", "--max", "2", "--tenant", "clitenant",
            )
        )  # fmt: skip
        assert made["engine_options"] == {"ctx": 2048, "flash_attn": True}
        frame = next_frame(ws, DeployFrame)
        assert (frame.name, frame.deployment_id) == ("cli-model", made["id"])

        listed = json.loads(cp.cli("deployments", "list", "--json", "--tenant", "clitenant"))
        assert [d["id"] for d in listed] == [made["id"]]
        assert listed[0]["replica_status"][0]["state"] == "pending"
        table = cp.cli("deployments", "list", "--tenant", "clitenant")
        assert made["id"] in table and "0/1" in table

        updated = json.loads(
            cp.cli("deployments", "update", made["id"], "--weight", "4", "--tenant", "clitenant")
        )
        assert updated["weight"] == 4 and updated["generation"] == 1
        scaled = json.loads(
            cp.cli("deployments", "scale", made["id"], "2", "--tenant", "clitenant")
        )
        assert scaled["replicas"] == 2

        # A value the schema refuses: a clear message and exit status 2, nothing written.
        bad = subprocess.run(
            [*_tool("control-plane"), "deployments", "create", "x", "--path", "../etc/passwd",
             "--tenant", "clitenant"],
            env=cp.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert bad.returncode == 2, bad.stderr
        assert "path" in bad.stderr and "Traceback" not in bad.stderr
        # Another tenant's deployment is not found from the CLI either.
        other = subprocess.run(
            [*_tool("control-plane"), "deployments", "delete", made["id"], "--tenant", "other"],
            env=cp.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert other.returncode == 1 and "No deployment" in other.stderr

        compared = json.loads(
            cp.cli("deployments", "compare", "cli-model", "--json", "--tenant", "clitenant")
        )
        assert [(r["id"], r["requests"], r["error_rate"], r["bias_probe"]) for r in compared] == [
            (made["id"], 0, None, None)
        ]
        table = cp.cli("deployments", "compare", "cli-model", "--tenant", "clitenant")
        assert made["id"] in table and "bias probe" in table
        cp.cli("deployments", "delete", made["id"], "--tenant", "clitenant")
        assert next_frame(ws, UndeployFrame).replica_id == frame.replica_id
        ws.close()
    finally:
        cp.stop()
