"""The console's pure parts: sessions, CSRF tokens, passwords, redirects, charts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from outpost.control_plane.console.charts import (
    IntervalRow,
    Series,
    bar_list,
    column_chart,
    interval_plot,
    money_fmt,
    nice_max,
)
from outpost.control_plane.console.pages.auth import safe_next
from outpost.control_plane.console.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    verify_password,
)
from outpost.control_plane.console.sessions import ConsoleKey, load_or_create_key


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_session_round_trip_expiry_and_sign_out() -> None:
    clock = Clock()
    key = ConsoleKey(b"k" * 32, clock=clock)
    token, claims = key.issue("usr_1", "$argon2id$hash", ttl_s=600)
    assert key.read(token) == claims
    clock.now += 599
    assert key.read(token) == claims
    clock.now += 1
    assert key.read(token) is None, "expired"
    clock.now -= 300
    key.deny(claims)
    assert key.read(token) is None, "signed out"


@pytest.mark.parametrize(
    "mangle",
    [
        # The signature's first character (its last ones may hold only padding bits a decoder
        # ignores).
        lambda t: (
            t[: t.rindex(".") + 1]
            + ("B" if t[t.rindex(".") + 1] == "A" else "A")
            + t[t.rindex(".") + 2 :]
        ),
        lambda t: t.replace("v1.", "v2."),
        lambda t: t.split(".")[0] + ".e30." + t.split(".")[2],  # payload swapped
        lambda t: "",
        lambda t: t + "." + t,
    ],
)
def test_forged_sessions_are_refused(mangle) -> None:
    key = ConsoleKey(b"k" * 32)
    token, _ = key.issue("usr_1", "h", ttl_s=600)
    assert key.read(mangle(token)) is None


def test_another_key_cannot_read_a_session() -> None:
    token, _ = ConsoleKey(b"a" * 32).issue("usr_1", "h", ttl_s=600)
    assert ConsoleKey(b"b" * 32).read(token) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    key = ConsoleKey(b"k" * 32)
    token = key.csrf_token("session-a")
    assert key.check_csrf("session-a", token)
    assert not key.check_csrf("session-b", token)
    assert not key.check_csrf("session-a", None) and not key.check_csrf("session-a", "")
    assert key.check_login_token("nonce", key.login_token("nonce"))
    assert not key.check_login_token(None, key.login_token("nonce"))
    assert not key.check_login_token("other", key.login_token("nonce"))


def test_console_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "console-secret"
    first = load_or_create_key(path)
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == first


def test_passwords_hash_with_argon2id_and_policy_is_length() -> None:
    stored = hash_password("a long enough passphrase")
    assert stored.startswith("$argon2id$")
    assert verify_password("a long enough passphrase", stored)
    assert not verify_password("a long enough passphrasE", stored)
    assert not verify_password("anything", None), "an unknown user never verifies"
    with pytest.raises(PasswordPolicyError):
        check_password_policy("short", 12)
    check_password_policy("twelve chars", 12)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/keys?x=1", "/keys?x=1"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("keys", "/"),
    ],
)
def test_only_local_redirects_after_sign_in(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_charts_escape_labels_and_carry_a_data_table() -> None:
    hostile = '<script>alert("x")</script>'
    html = str(
        column_chart(
            ["00:00", hostile],
            [Series("ok", [1, 2]), Series("err", [0, 1], "s-err")],
            title=hostile,
            desc="d",
            integer=True,
        )
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'role="img"' in html and "<table" in html and "<details" in html
    html = str(bar_list([(hostile, 3.0), ("b", 1.0)], title="t", desc="d"))
    assert "<script>" not in html and html.count("<rect") == 2
    html = str(
        interval_plot(
            [IntervalRow("a", 0.5, 0.4, 0.6, 40), IntervalRow("b", 0.2, 0.1, 0.3, 40, True)],
            title="t",
            desc="d",
            bounds=(0, 1),
        )
    )
    assert html.count('class="iv flag"') == 1 and html.count("<circle") == 2


def test_chart_numbers() -> None:
    assert [nice_max(v) for v in (0, 0.7, 1, 3, 7, 12, 4100)] == [1.0, 1.0, 1, 5, 10, 20, 5000]
    assert (
        money_fmt(0) == "$0" and money_fmt(12.5) == "$12.50" and money_fmt(0.000089) == "$0.000089"
    )
    assert money_fmt(0.125) == "$0.12" or money_fmt(0.125) == "$0.125"
    assert "e" not in money_fmt(0.0000012)


def test_docs_name_every_console_setting_page_and_command() -> None:
    from outpost.control_plane.console.config import ConsoleSettings
    from outpost.control_plane.console.templating import NAV

    docs = (Path(__file__).parents[2] / "docs" / "console.md").read_text(encoding="utf-8")
    for name in ConsoleSettings.model_fields:
        assert f"OUTPOST_CONSOLE_{name.upper()}" in docs, name
    for path, label in NAV:
        assert f"**{label}** `{path}`" in docs, label
    for command in ("users create", "users list", "users unlock", "users set-password"):
        assert f"control-plane {command}" in docs, command


def test_the_runners_page_shows_models_whose_engine_is_down() -> None:
    from datetime import UTC, datetime

    from outpost.control_plane.console.deps import ConsoleUser
    from outpost.control_plane.console.pages.runners import RunnerView, with_live_state
    from outpost.control_plane.console.templating import environment
    from outpost.control_plane.tunnel.hub import ConnectedRunner
    from outpost.control_plane.tunnel.link import Link
    from outpost.sdk.protocol import ModelInfo, StatusFrame

    async def nothing(*_: object) -> None:
        return None

    now = datetime(2026, 3, 1, tzinfo=UTC)
    link = Link("run_1", "ses_1", nothing, 4, nothing)
    link.dispatch(
        StatusFrame(running=1, unavailable_models=["smol-b"])
    )  # as the tunnel delivers it
    live = ConnectedRunner(
        runner_id="run_1",
        tenant_id="ten_1",
        name="gpu-1",
        capacity=4,
        links=[link],
        models=[
            ModelInfo(name="smol-a", engine="xllamacpp"),
            ModelInfo(name="smol-b", engine="xllamacpp"),
        ],
    )
    view = RunnerView(
        id="run_1",
        name="gpu-1",
        status="offline",
        created_at=now,
        last_seen_at=now,
        labels={},
        capacity=4,
        hardware={},
        cost={},
        usd_per_hour=None,
    )
    with_live_state(view, live)
    assert view.status == "connected" and view.unavailable_models == ["smol-b"]

    viewer = ConsoleUser(
        id="usr_1",
        email="v@example.com",
        role="viewer",
        tenant_id="ten_1",
        tenant_name="t",
        session_id="s",
        csrf_token="c",
        expires_at=0,
    )
    template = environment().get_template("partials/runners_table.html")
    html = template.render(runners=[view], user=viewer, now=now)
    assert "Not serving (engine restarting, loading or hung): smol-b" in html
    assert html.count("· down") == 1 and '<span class="chip flag">smol-b' in html

    link.dispatch(StatusFrame(running=1))  # its engine is back
    with_live_state(view, live)
    html = template.render(runners=[view], user=viewer, now=now)
    assert view.unavailable_models == [] and "Not serving" not in html and "· down" not in html
