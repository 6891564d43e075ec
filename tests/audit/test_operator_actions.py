"""Operator writes through the one actions layer, at the CLI door: revoke, list, refusals, audit.

The commands run in-process through Typer's test runner on a real SQLite
database (as test_cli.py); the chain they write is exported and verified.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from harness.processes import run_db
from outpost.control_plane.api.errors import to_api_error
from outpost.control_plane.audit import AuditAction
from outpost.control_plane.audit.events import _ACTION
from outpost.control_plane.cli import app
from outpost.control_plane.db.engine import Database
from outpost.control_plane.domain_errors import Conflict, Forbidden, Invalid, NotFound
from outpost.control_plane.store.pools import default_pool
from outpost.control_plane.store.runners import create_runner
from outpost.control_plane.store.tenants import get_or_create_tenant
from tests.audit.test_cli import Cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _key_id(cli: Cli, tenant: str, name: str) -> str:
    return next(
        k["id"]
        for k in _json_lines(cli("keys", "list", "--tenant", tenant, "--json"))
        if k["name"] == name
    )


def _events(cli: Cli, tmp_path: Path) -> list[dict]:
    out = tmp_path / "audit.jsonl"
    cli("audit", "export", "--out", str(out))
    key = cli("audit", "keys", "show").splitlines()[-1]
    assert cli("audit", "verify", str(out), "--public-key", key).startswith("OK:")
    return [
        r["event"] for r in map(json.loads, out.read_text().splitlines()) if r["kind"] == "event"
    ]


def test_keys_revoke_is_tenant_scoped_and_audited(cli: Cli, tmp_path: Path) -> None:
    secret = cli("keys", "create", "mine").splitlines()[-1]
    cli("keys", "create", "theirs", "--tenant", "acme")
    mine, theirs = _key_id(cli, "default", "mine"), _key_id(cli, "acme", "theirs")
    listed = cli("keys", "list", "--json")
    assert secret not in listed and "secret_hash" not in listed, "a listing never shows secrets"

    # Another tenant's key id, named under this tenant: refused, and left alone.
    cli("keys", "revoke", theirs, code=1)
    assert all(
        k["revoked_at"] is None
        for k in _json_lines(cli("keys", "list", "--tenant", "acme", "--json"))
    )
    cli("keys", "revoke", "key_nope", code=1)
    cli("keys", "revoke", "x", "--tenant", "no-such-tenant", code=1)

    cli("keys", "revoke", mine)
    cli("keys", "revoke", mine)  # idempotent: the first revocation time stays
    [row] = _json_lines(cli("keys", "list", "--json"))
    assert row["id"] == mine and row["revoked_at"] is not None
    revokes = [e for e in _events(cli, tmp_path) if e.get("type") == "admin.api_key.revoke"]
    assert [e["data"]["target"] for e in revokes] == [mine, mine]


def test_runners_revoke_and_list(cli: Cli, tmp_path: Path) -> None:
    cli("keys", "create", "setup")  # migrates and makes the default tenant

    async def add_runner(db: Database) -> str:
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "default")
            runner = await create_runner(
                session,
                tenant_id=tenant.id,
                pool_id=(await default_pool(session, tenant.id)).id,
                name="edge-1",
                identity_public_key="k" * 43,
                hpke_public_key=None,
                hpke_key_signature=None,
            )
            await session.commit()
            return runner.id

    runner_id = run_db(cli.env["OUTPOST_DATABASE_URL"], add_runner)
    [row] = _json_lines(cli("runners", "list", "--json"))
    assert row["id"] == runner_id and row["revoked_at"] is None
    cli("runners", "revoke", "run_nope", code=1)
    cli("runners", "revoke", runner_id)
    [row] = _json_lines(cli("runners", "list", "--json"))
    assert row["revoked_at"] is not None
    [event] = [e for e in _events(cli, tmp_path) if e.get("type") == "admin.runner.revoke"]
    assert event["data"]["target"] == runner_id and event["data"]["details"] == {"name": "edge-1"}


def test_refusals_leave_as_one_line_and_an_exit_code(cli: Cli) -> None:
    """Values the options allow but the domain refuses: exit 2, no traceback; missing things:
    exit 1."""
    cli("keys", "create", "setup")
    for args in (
        ("tenants", "set", "t", "--residency", "[1]"),
        ("pools", "grant", "default", "--to", "default"),
    ):  # a grant to oneself
        result = cli.runner.invoke(app, list(args), env=cli.env)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (
            f"{args}: {result.output}"
        )
        assert "error:" in result.output and "Traceback" not in result.output
    cli("budgets", "delete", "bud_nope", code=1)
    cli("budgets", "set", "--amount", "5", "--key", "key_nope", code=1)
    cli("pools", "grant", "default", "--to", "*", code=1)  # only the platform operator may


def test_domain_errors_map_to_the_statuses_the_api_always_answered() -> None:
    cases = {
        NotFound("x", code="api_key_not_found"): (
            404,
            "invalid_request_error",
            "api_key_not_found",
        ),
        Conflict("x", code="pool_exists"): (409, "invalid_request_error", "pool_exists"),
        Invalid("x", param="usd_per_hour"): (400, "invalid_request_error", "invalid_request"),
        Forbidden("x"): (403, "permission_error", "forbidden"),
    }
    for exc, (status, kind, code) in cases.items():
        error = to_api_error(exc)
        assert (error.status, error.type, error.code) == (status, kind, code)
    assert to_api_error(Invalid("x", param="usd_per_hour")).param == "usd_per_hour"


def test_audit_actions_are_the_strings_the_chain_stores() -> None:
    for action in AuditAction:
        assert isinstance(action, str) and f"admin.{action}" == f"admin.{action.value}"
        assert _ACTION.match(action) and len(action) <= 58, action
    assert AuditAction("api_key.create") is AuditAction.API_KEY_CREATE


def test_every_admin_action_is_spelled_once() -> None:
    """No ``record_admin(action="...")`` literal outside the enum: a new action is added to
    AuditAction."""
    spelled = []
    for path in sorted((ROOT / "control_plane").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "record_admin"
            ):
                spelled += [
                    f"{rel}:{node.lineno}"
                    for kw in node.keywords
                    if kw.arg == "action" and isinstance(kw.value, ast.Constant)
                ]
    assert spelled == []


def test_users_list_json_never_shows_a_password_hash(cli: Cli) -> None:
    cli.env["OUTPOST_USER_PASSWORD"] = "a long enough passphrase"
    cli("users", "create", "ops@example.com", "--role", "admin")
    cli("users", "create", "ops@example.com", code=1)  # a duplicate is a conflict: exit 1
    cli("users", "create", "not an email", code=2)  # a refused value: exit 2
    [row] = _json_lines(cli("users", "list", "--json"))
    assert (
        row["email"] == "ops@example.com" and row["role"] == "admin" and row["tenant"] == "default"
    )
    assert "password" not in json.dumps(row) and "scrypt" not in json.dumps(row)
