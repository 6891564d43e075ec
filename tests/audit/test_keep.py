"""A tenant keeps checkpoints (SDK, API, CLI) outside a real control plane and catches a truncated
log.

The control plane's own checkpointer notices the same truncation and says
so loudly: its metric and a console banner.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess, wait_until
from outpost.sdk.client import Client
from outpost.sdk.errors import NotFoundError
from tests.audit.conftest import run_cli

PASSWORD = "correct horse battery staple"


def _latest_seq(client: Client) -> int:
    try:
        return int(client.audit.latest_checkpoint()["seq"])
    except NotFoundError:  # until the first checkpoint
        return 0


def _alarm(cp: ControlPlaneProcess) -> float:
    text = httpx.get(f"{cp.url}/metrics", timeout=10).text
    found = re.search(r"^outpost_audit_chain_alarm (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def _console_audit_page(cp: ControlPlaneProcess, email: str) -> str:
    with httpx.Client(base_url=cp.url, timeout=30, headers={"Origin": cp.url}) as browser:
        form = browser.get("/login").text
        token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
        browser.post("/login", data={"email": email, "password": PASSWORD, "login_token": token})
        page = browser.get("/audit")
        assert page.status_code == 200 and "Sign out" in page.text, page.text[:500]
        return page.text


@pytest.mark.timeout(600)
def test_kept_checkpoints_catch_a_truncated_log_and_the_checkpointer_refuses(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "cp" / "outpost.db"
    env = {"OUTPOST_AUDIT_CHECKPOINT_EVERY_N": "1", "OUTPOST_AUDIT_CHECKPOINT_EVERY_S": "0.5"}
    cp = ControlPlaneProcess(
        tmp_path / "cp", f"sqlite+aiosqlite:///{db_file}", extra_env=env
    ).start()
    try:
        key = run_cli(cp, "keys", "create", "keeper", "--tenant", "keeper", "--admin").splitlines()[
            -1
        ]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "outpost.control_plane.cli",
                "users",
                "create",
                "k@example.com",
                "--role",
                "admin",
                "--tenant",
                "keeper",
            ],
            env={**cp.env, "OUTPOST_USER_PASSWORD": PASSWORD},
            check=True,
            capture_output=True,
            timeout=300,
        )
        public_key = run_cli(cp, "audit", "keys", "show").splitlines()[-1]
        with Client(base_url=cp.url, api_key=key) as client:
            for batch in range(2):  # two checkpoints at least: the log is cut back to the first
                for i in range(2):
                    client.keys.create(name=f"k{batch}{i}")
                # Only the server signs here, so its checkpointer has verified the whole chain.
                newest = max(e["seq"] for e in client.audit.list(limit=1000).data)
                wait_until(
                    lambda newest=newest: _latest_seq(client) >= newest,
                    60,
                    "the server's checkpoint",
                )
            kept = client.audit.checkpoints()
            assert len(kept) >= 2
            assert kept and kept[-1] == client.audit.latest_checkpoint()
            export = client.audit.export()
            result = client.audit.verify(export, [public_key], kept_checkpoints=kept)
            assert result.ok and result.kept_checkpoints == len(kept), result.reason
            own = client.audit.list(limit=1000).data
            assert [e["tenant_seq"] for e in own] == list(range(1, len(own) + 1))

        # The tenant's CLI keeps them in a file of its own, over the API (no database).
        kept_file = tmp_path / "kept.jsonl"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "outpost.control_plane.cli",
                "audit",
                "checkpoints",
                "--url",
                cp.url,
                "--out",
                str(kept_file),
            ],
            env={"PATH": cp.env["PATH"], "OUTPOST_API_KEY": key, "HOME": str(tmp_path)},
            check=True,
            capture_output=True,
            timeout=300,
        )
        assert [json.loads(line) for line in kept_file.read_text().splitlines()] == kept

        # Someone with the database cuts the log back to the first checkpoint, checkpoints and head
        # too.
        first = kept[0]
        with sqlite3.connect(db_file, timeout=30) as conn:
            conn.execute("DELETE FROM audit_events WHERE seq > ?", (first["seq"],))
            conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (first["seq"],))
            conn.execute(
                "UPDATE audit_head SET seq = ?, hash = ?, checkpoint_seq = ?, checkpoint_ts = ?",
                (first["seq"], first["hash"], first["seq"], first["ts"]),
            )

        truncated = tmp_path / "truncated.jsonl"
        truncated.write_text(
            httpx.get(
                f"{cp.url}/api/audit/export", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ).text
        )
        verify = [
            sys.executable,
            "-m",
            "outpost.control_plane.cli",
            "audit",
            "verify",
            str(truncated),
            "--public-key",
            public_key,
        ]
        alone = subprocess.run(
            verify, check=False, env=cp.env, capture_output=True, text=True, timeout=300
        )
        assert alone.returncode == 0, alone.stdout  # the export alone is consistent
        caught = subprocess.run(
            [*verify, "--kept", str(kept_file)],
            check=False,
            env=cp.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert caught.returncode == 1 and "truncated" in caught.stdout, caught.stdout

        # The server had signed further: it refuses, and says so on /metrics and in the console.
        wait_until(lambda: _alarm(cp) == 1.0, 60, "outpost_audit_chain_alarm 1")
        page = _console_audit_page(cp, "k@example.com")
        assert 'id="audit-alarm"' in page and "newest events were removed" in page
        assert re.search(
            r'<td class="num">\d+<span [^>]*> #\d+</span>', page
        )  # the tenant's own number too
    finally:
        cp.stop()
    assert "audit checkpoint REFUSED" in cp.log()
