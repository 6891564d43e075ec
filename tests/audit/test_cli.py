"""``control-plane audit ...`` on a SQLite database: export, verify, rotate, prune.

The commands run in-process through Typer's test runner (the same argument
parsing and code as the console script, without a 10-second interpreter
start per command); test_stack.py and test_multiprocess.py run them as real
processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost.control_plane.audit.keys import generate_key
from outpost.control_plane.cli import app
from tests.audit.conftest import kinds


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.env = {
            "OUTPOST_STATE_DIR": str(tmp / "cp"),
            "OUTPOST_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, f"{args}: {result.output}{result.exception!r}"
        return result.stdout.strip()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def verify(cli: Cli, path: Path, *keys: str, extra: tuple[str, ...] = (), code: int = 0) -> str:
    return cli(
        "audit",
        "verify",
        str(path),
        *[a for k in keys for a in ("--public-key", k)],
        *extra,
        code=code,
    )


def test_export_verify_rotate_and_prune(cli: Cli, tmp_path: Path) -> None:
    cli("keys", "create", "one")
    cli("runners", "enroll", "edge-1", "--tenant", "acme")
    old = cli("audit", "keys", "show").splitlines()[-1]
    new = cli("audit", "keys", "rotate").splitlines()[-1]
    assert new != old and cli("audit", "keys", "show").splitlines()[-1] == new
    cli("keys", "create", "two", "--tenant", "acme")

    full = tmp_path / "full.jsonl"
    cli("audit", "export", "--out", str(full))
    for pin in (old, new):  # the rotation record links the two keys both ways
        assert verify(cli, full, pin).startswith("OK: 4 events")
    key_file = tmp_path / "pinned.pub"
    key_file.write_text(new + "\n")
    verify(cli, full, str(key_file))
    assert "not trusted" in verify(cli, full, generate_key().public_key, code=1)

    lines = full.read_text().splitlines()
    i = kinds(lines).index("event")
    rec = json.loads(lines[i])
    rec["event"]["actor"] = "operator:someone-else"
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines[:i], json.dumps(rec), *lines[i + 1 :]]) + "\n")
    out = verify(cli, tampered, new, code=1)
    assert out.startswith(f"FAILED at line {i} (seq 1): hash mismatch"), out

    scoped = tmp_path / "acme.jsonl"
    cli("audit", "export", "--tenant", "acme", "--out", str(scoped))
    # The default tenant's key is redacted; the log's own audit.key.rotate is shown to every tenant.
    assert "1 redacted" in verify(cli, scoped, new)

    archive = tmp_path / "archive.jsonl"
    cli("audit", "prune", "--before", "2999-01-01", "--export", str(archive))
    verify(cli, archive, old)
    rest = tmp_path / "rest.jsonl"
    cli("audit", "export", "--out", str(rest))
    assert kinds(rest.read_text().splitlines())[:4] == ["header", "key", "key", "anchor"]
    assert verify(cli, rest, new).startswith("OK: 1 events (seq 5..5")  # the audit.prune event


def test_an_unsigned_tail_fails_unless_allowed(cli: Cli, tmp_path: Path) -> None:
    cli("keys", "create", "one")
    cli("audit", "checkpoint")
    cli("keys", "create", "two")
    path = tmp_path / "audit.jsonl"
    cli("audit", "export", "--no-checkpoint", "--out", str(path))
    key = cli("audit", "keys", "show").splitlines()[-1]
    assert "the last 1 events are not covered" in verify(cli, path, key, code=1)
    verify(cli, path, key, extra=("--allow-unsigned-tail",))
