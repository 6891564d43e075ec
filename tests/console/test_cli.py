"""``control-plane users``: the password comes from the environment or a prompt, never a flag."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost.control_plane.console.cli import PASSWORD_ENV, users_app


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OUTPOST_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("OUTPOST_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    runner = CliRunner()

    def run(*args: str, password: str | None = None, stdin: str | None = None):
        env = {PASSWORD_ENV: password} if password is not None else {}
        # The session's Playwright sync API keeps an event loop running on the main thread; a real
        # `control-plane users` process never has one, so invoke the CLI on a thread of its own.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(runner.invoke, users_app, list(args), env=env, input=stdin).result()

    return run


def test_create_list_and_set_password(cli) -> None:
    made = cli(
        "create",
        "Ops@Example.com",
        "--role",
        "admin",
        "--tenant",
        "lab",
        password="a long enough passphrase",
    )
    assert made.exit_code == 0, made.output
    assert "usr_" in made.output and "a long enough passphrase" not in made.output
    assert "ops@example.com  admin  tenant=lab" in cli("list").output
    again = cli("create", "ops@example.com", password="a long enough passphrase")
    assert again.exit_code == 1 and "already exists" in again.output
    prompted = cli(
        "set-password", "ops@example.com", stdin="another passphrase\nanother passphrase\n"
    )
    assert prompted.exit_code == 0, prompted.output
    assert "another passphrase" not in prompted.output, "the prompt does not echo"
    assert cli("unlock", "ops@example.com").exit_code == 0
    assert cli("unlock", "nobody@example.com").exit_code == 1


def test_password_is_never_a_flag_and_must_be_long(cli) -> None:
    flagged = cli("create", "a@example.com", "--password", "a long enough passphrase")
    assert flagged.exit_code == 2 and "No such option" in flagged.output
    short = cli("create", "a@example.com", password="short")
    assert short.exit_code == 2 and "at least 12 characters" in short.output
    assert (
        cli(
            "create", "a@example.com", "--role", "root", password="a long enough passphrase"
        ).exit_code
        == 2
    )
