"""The console in real headless Chromium against a real control plane and a real runner (SQLite
and PostgreSQL)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from harness.processes import RunnerProcess, wait_until
from outpost.control_plane.store.keys import list_api_keys
from outpost.control_plane.store.tenants import get_tenant_by_name
from tests.conftest import Stack
from tests.console.conftest import Accounts, Session, in_database

MODEL = "smollm2-135m-instruct"
PAGES = (
    "/",
    "/runners",
    "/pools",
    "/models",
    "/playground",
    "/keys",
    "/usage",
    "/audit",
    "/fairness",
    "/settings",
)


def _expect_ok(session: Session, path: str) -> None:
    response = session.page.goto(path)
    assert response is not None and response.status == 200, (path, response and response.status)


def test_sign_in_sets_a_strict_http_only_session_and_shows_the_live_runner(
    admin: Session, stack: Stack
) -> None:
    cookies = {c["name"]: c for c in admin.context.cookies()}
    session_cookie = cookies["outpost_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    page = admin.page
    assert page.get_by_role("heading", level=1).inner_text() == "Overview"
    _expect_ok(admin, "/runners")
    card = page.locator(f"[data-runner-id='{stack.runner_id}']")
    assert "connected" in card.inner_text()
    assert MODEL in card.inner_text() and "xllamacpp" in card.inner_text()
    assert re.search(r"\$\d+\.\d+/h", card.inner_text()), "the cost model is shown"
    assert "Load:" in card.inner_text() and card.locator("meter").count() == 1
    _expect_ok(admin, "/models")
    assert page.locator("tbody th", has_text=MODEL).count() == 1
    assert not admin.errors, admin.errors


def test_pages_need_a_session(session: Session) -> None:
    response = session.page.goto("/keys")
    assert session.page.url.endswith("/login?next=/keys")
    assert response is not None and response.status == 200
    raw = httpx.get(f"{session.base}/usage", headers={"accept": "application/json"})
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "login_required"


def test_wrong_password_is_refused_and_audited(session: Session, accounts: Accounts) -> None:
    session.login(accounts.viewer, password="not the password at all")
    assert session.page.url.endswith("/login")
    assert "do not match" in session.page.locator("[role=alert]").inner_text()
    session.login(accounts.admin)
    _expect_ok(session, "/audit?type=auth.login.failure")
    assert accounts.viewer.email in session.page.locator("#audit-table").inner_text()


def test_lockout_after_five_failures_even_for_the_right_password(
    session: Session, accounts: Accounts
) -> None:
    for _ in range(4):
        session.login(accounts.lockable, password="wrong password, try again")
        assert "do not match" in session.page.locator("[role=alert]").inner_text()
    response = _post_login(session, accounts.lockable.email, "wrong password, fifth time")
    assert response.status == 429
    assert "locked" in session.page.locator("[role=alert]").inner_text()
    response = _post_login(session, accounts.lockable.email, accounts.lockable.password)
    assert response.status == 429, "a locked account refuses even its right password"
    assert session.page.url.endswith("/login")
    # An admin sees the lock and lifts it.
    session.context.clear_cookies()
    session.login(accounts.admin)
    _expect_ok(session, "/settings")
    row = session.page.locator("#users-table tr", has_text=accounts.lockable.email)
    assert "locked" in row.inner_text()
    row.get_by_role("button", name="Unlock").click()
    session.page.wait_for_url("**/settings?notice=user_unlocked")
    session.context.clear_cookies()
    session.login(accounts.lockable)
    assert session.page.get_by_role("heading", level=1).inner_text() == "Overview"


def _post_login(session: Session, email: str, password: str):
    session.page.goto("/login")
    session.page.fill("#email", email)
    session.page.fill("#password", password)
    with session.page.expect_navigation() as nav:
        session.page.click("button[type=submit]")
    return nav.value


def test_enroll_shows_the_token_once_then_the_runner_connects_and_can_be_revoked(
    admin: Session, stack: Stack, tmp_path: Path
) -> None:
    page = admin.page
    _expect_ok(admin, "/runners")
    page.fill("#runner-name", "console-enrolled")
    page.get_by_role("button", name="Create enrollment token").click()
    token = page.locator("#token").input_value()
    assert token.startswith("opet-") and "Shown once" in page.inner_text("main")
    admin.shot("enroll-token")
    _expect_ok(admin, "/runners")
    assert token not in page.content(), "the token is never shown again"

    runner = RunnerProcess(stack.cp, tmp_path / "runner", "console-enrolled")
    runner.start(token=token)
    try:
        rid = runner.wait_connected(stack.api_key)
        _expect_ok(admin, "/runners")
        card = page.locator(f"[data-runner-id='{rid}']")
        assert "console-enrolled" in card.inner_text() and "connected" in card.inner_text()
        card.get_by_role("button", name="Revoke").click()
        page.wait_for_url("**/runners?notice=runner_revoked")
        assert "revoked" in page.locator(f"[data-runner-id='{rid}']").inner_text()
        # Refused at once: the runner's tunnel is closed and it cannot come back.
        wait_until(lambda: rid not in _connected(stack), 20, "the revoked runner to drop")
        assert stack.runner_id in _connected(stack)
    finally:
        runner.stop()


def _connected(stack: Stack) -> set[str]:
    resp = httpx.get(
        f"{stack.cp.url}/api/runners",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=5,
    )
    return {r["id"] for r in resp.json()["data"] if r["connected"]}


def test_create_key_shows_the_secret_once_and_revoking_refuses_it(
    admin: Session, stack: Stack
) -> None:
    page = admin.page
    _expect_ok(admin, "/keys")
    page.fill("#key-name", "from-the-console")
    page.fill("#key-rpm", "600")
    page.fill("#key-budget", "25")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret").input_value()
    assert secret.startswith("opsk-") and "Shown once" in page.inner_text("main")
    admin.shot("key-created")

    client = openai.OpenAI(base_url=stack.base_url, api_key=secret, max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None

    _expect_ok(admin, "/keys")
    assert secret not in page.content(), "the secret is never shown again"
    row = page.locator("#keys-table tr", has_text="from-the-console")
    assert "600/min" in row.inner_text() and "$25.00" in row.inner_text()
    row.get_by_role("button", name=re.compile("Revoke")).click()
    page.wait_for_url("**/keys?notice=key_revoked")
    assert "revoked" in page.locator("#keys-table tr", has_text="from-the-console").inner_text()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )


def test_playground_streams_a_completion_then_usage_and_audit_show_it(
    admin: Session, stack: Stack
) -> None:
    page = admin.page
    _expect_ok(admin, "/playground")
    page.select_option("#model", MODEL)
    page.fill("#max_tokens", "48")
    page.fill("#temperature", "0")
    page.fill("#prompt", "Count from one to twenty in words.")
    page.click("#send")
    answer = page.locator(".turn-assistant .turn-text")
    # Streaming is visible: the answer is seen growing before the response is complete.
    partial_lengths = set()
    deadline = time.monotonic() + 90
    while answer.get_attribute("data-done") is None and time.monotonic() < deadline:
        text = answer.inner_text()
        if text:
            partial_lengths.add(len(text))
        time.sleep(0.02)
    assert answer.get_attribute("data-done") == "true", "the stream did not finish"
    assert len(partial_lengths) >= 2, (
        f"expected to see the answer grow, saw lengths {partial_lengths}"
    )
    assert answer.inner_text().strip() and "error" not in (answer.get_attribute("class") or "")
    assert stack.runner_id in page.inner_text("#meta-runner")
    assert re.fullmatch(r"[\d,.]+ m?s", page.inner_text("#meta-latency"))
    assert re.fullmatch(r"\d+ / \d+", page.inner_text("#meta-tokens"))
    request_id = page.inner_text("#meta-request")
    assert request_id.startswith("req_")
    admin.shot("playground")

    wait_until(lambda: _usage_has_console_key(admin), 20, "the request in usage")
    _expect_ok(admin, "/usage?period=day")
    assert page.locator("#usage-by-model tr", has_text=MODEL).count() == 1
    assert page.locator("figure.chart svg[role=img]").count() >= 3
    _expect_ok(admin, "/audit?type=inference")
    assert request_id in page.locator("#audit-table").inner_text()
    assert not admin.errors, admin.errors


def _usage_has_console_key(session: Session) -> bool:
    session.page.goto("/usage?period=day")
    return session.page.locator("#usage-by-key tr", has_text="console: ").count() == 1


def test_audit_chain_verifies_and_exports(admin: Session) -> None:
    page = admin.page
    _expect_ok(admin, "/audit")
    page.get_by_role("button", name="Verify the chain now").click()
    page.wait_for_url("**verify=true**")
    result = page.locator("#verify-result")
    assert "Verified." in result.inner_text(), result.inner_text()
    admin.shot("audit-verified")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download export (JSONL)").click()
    first = Path(download.value.path()).read_text(encoding="utf-8").splitlines()[0]
    assert '"kind":"header"' in first


def test_viewer_sees_everything_and_can_change_nothing(
    session: Session, accounts: Accounts, stack: Stack
) -> None:
    session.login(accounts.viewer)
    page = session.page
    for path in ("/runners", "/keys", "/settings", "/fairness"):
        _expect_ok(session, path)
        assert (
            page.get_by_role(
                "button", name=re.compile("Revoke|Create|Set budget|Save|Add user|Start")
            ).count()
            == 0
        ), path
    _expect_ok(session, "/runners")
    assert stack.runner_id in page.content()
    # Forging the admin form with the viewer's own valid CSRF token is refused by role.
    key_id = _an_active_key(session)
    response = page.request.post(f"/keys/{key_id}/revoke", form={"csrf_token": session.csrf()})
    assert response.status == 403
    response = page.request.post(
        f"/runners/{stack.runner_id}/revoke", form={"csrf_token": session.csrf()}
    )
    assert response.status == 403
    assert stack.runner_id in _connected(stack)


def _an_active_key(session: Session) -> str:
    session.page.goto("/keys")
    row = session.page.locator("#keys-table tr[data-key-id]", has_text="active").first
    return row.get_attribute("data-key-id")


def test_a_post_without_the_csrf_token_is_refused(admin: Session) -> None:
    page = admin.page
    _expect_ok(admin, "/keys")
    before = page.locator("#keys-table tr[data-key-id]").count()
    assert page.request.post("/keys", form={"name": "no-token"}).status == 403
    assert (
        page.request.post("/keys", form={"name": "bad-token", "csrf_token": "forged"}).status == 403
    )
    response = page.request.post(
        "/keys",
        form={"name": "cross-site", "csrf_token": admin.csrf()},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status == 403
    direct = httpx.post(
        f"{admin.base}/keys", data={"name": "cookie-only"}, headers={"cookie": _cookies(admin)}
    )
    assert direct.status_code == 403
    _expect_ok(admin, "/keys")
    assert page.locator("#keys-table tr[data-key-id]").count() == before


def _cookies(session: Session) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in session.context.cookies())


def test_sign_out_ends_the_session_even_for_a_copied_cookie(admin: Session) -> None:
    copied = _cookies(admin)
    assert httpx.get(f"{admin.base}/keys", headers={"cookie": copied}).status_code == 200
    admin.page.get_by_role("button", name="Sign out").click()
    admin.page.wait_for_url("**/login?notice=signed_out")
    after = httpx.get(f"{admin.base}/keys", headers={"cookie": copied, "accept": "text/html"})
    assert after.status_code == 303 and after.headers["location"].startswith("/login")


def test_another_tenants_admin_sees_none_of_this_tenant(
    session: Session, accounts: Accounts, stack: Stack
) -> None:
    session.login(accounts.other_admin)
    page = session.page
    for path in PAGES:
        _expect_ok(session, path)
        html = page.content()
        assert stack.runner_id not in html or path in ("/fairness",), path
        assert "from-the-console" not in html and accounts.admin.email not in html, path
    _expect_ok(session, "/runners")
    assert "No runners enrolled" in page.inner_text("main")
    # This tenant's ids do not exist over there.
    key_id = _default_tenant_key(stack)
    csrf = session.csrf()
    assert page.request.post(f"/keys/{key_id}/revoke", form={"csrf_token": csrf}).status == 404
    assert (
        page.request.post(f"/runners/{stack.runner_id}/revoke", form={"csrf_token": csrf}).status
        == 404
    )
    assert stack.runner_id in _connected(stack)
    assert (
        page.request.get("/audit").ok
        and accounts.admin.email not in page.request.get("/audit").text()
    )


def _default_tenant_key(stack: Stack) -> str:
    async def first_active(session: AsyncSession) -> str:
        tenant = await get_tenant_by_name(session, "default")
        return next(k.id for k in await list_api_keys(session, tenant.id) if k.revoked_at is None)

    return in_database(stack.database_url, first_active)


def test_probe_runs_show_intervals_and_compare_side_by_side(admin: Session) -> None:
    page = admin.page
    run_ids = []
    for tokens in ("16", "12"):
        _expect_ok(admin, "/fairness")
        assert "Jain's index" in page.inner_text("#fairness-live")
        page.select_option("#p-model", MODEL)
        page.fill("#p-n", "1")
        page.fill("#p-tokens", tokens)
        page.get_by_role("button", name="Start probe run").click()
        page.wait_for_url(re.compile(r".*/fairness/runs/fair_[0-9a-f]+\?notice=probe_started"))
        run_ids.append(page.url.split("/runs/")[1].split("?")[0])
        deadline = time.monotonic() + 180
        while "completed" not in page.locator("#run-facts").inner_text():
            assert time.monotonic() < deadline, page.inner_text("main")
            assert "failed" not in page.locator("#run-facts").inner_text(), page.inner_text("main")
            page.wait_for_timeout(1000)
            page.goto(f"/fairness/runs/{run_ids[-1]}")
        assert page.locator("figure.chart svg[role=img]").count() >= 5, (
            "one interval plot per attribute and outcome"
        )
        assert "Parity difference" in page.inner_text("main")
    admin.shot("fairness-run")
    _expect_ok(admin, "/fairness")
    # The probes ran through the runner, so its queue is listed: slots include its fair headroom.
    assert re.search(
        r"\d+/\d+ running \(\d+ of 1 headroom\), \d+ queued", page.inner_text("#fairness-live")
    )
    for run_id in run_ids:
        page.check(f"#cmp-{run_id}")
    page.get_by_role("button", name="Compare selected runs").click()
    page.wait_for_url("**/fairness/compare?**")
    assert page.get_by_role("heading", level=1).inner_text() == "Probe runs side by side"
    assert page.locator("figure.chart").count() >= 5
    admin.shot("fairness-compare")
    assert not admin.errors, admin.errors


def test_every_page_renders_accessibly_and_is_screenshotted(admin: Session) -> None:
    page = admin.page
    for path in PAGES:
        _expect_ok(admin, path)
        assert page.locator("h1").count() == 1, path
        assert (
            page.locator("main#main").count() == 1
            and page.locator("nav[aria-label=Main]").count() == 1
        ), path
        assert page.locator("nav a[aria-current=page]").count() == 1, path
        unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
            .filter(el => el.type !== 'hidden' && !el.closest('[hidden]'))
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
            .map(el => el.outerHTML)""")
        assert not unlabeled, (path, unlabeled)
        name = path.strip("/") or "overview"
        admin.shot(name)
    assert not admin.errors, admin.errors  # a CSP violation would show up here
