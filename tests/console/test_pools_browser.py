"""Pools in the console, in real headless Chromium against the real stack (SQLite and PostgreSQL).

An admin creates a pool and grants it to another tenant; that tenant's admin sees the grant
coming in and revokes it; both tenants' audit logs hold the grant (issue 19).
"""

from __future__ import annotations

import secrets

from tests.conftest import Stack
from tests.console.conftest import Accounts, Session


def test_create_grant_then_the_grantee_sees_and_revokes_it(
    admin: Session, accounts: Accounts, stack: Stack, browser: object, shots_dir: object
) -> None:
    page = admin.page
    name = f"gpu-{secrets.token_hex(3)}"
    assert page.goto("/pools").status == 200
    page.fill("#pool-name", name)
    with page.expect_navigation():
        page.get_by_role("button", name="Create pool").click()
    assert page.url.endswith("/pools?notice=pool_created")
    assert page.locator("#pools-table tr", has_text=name).count() == 1
    page.select_option("#grant-pool", label=name)
    page.fill("#grant-tenant", accounts.other_admin.tenant)
    with page.expect_navigation():
        page.get_by_role("button", name="Grant", exact=True).click()
    assert page.url.endswith("/pools?notice=pool_granted"), page.url
    row = page.locator("#grants-table tbody tr", has_text=name)
    assert "outgoing" in row.inner_text() and accounts.other_admin.tenant in row.inner_text()
    grant_id = row.get_attribute("data-grant-id")
    admin.shot("pools-granted")

    other = Session(browser, stack, shots_dir)  # type: ignore[arg-type]
    try:
        other.login(accounts.other_admin)
        assert other.page.goto("/pools").status == 200
        incoming = other.page.locator(f"#grants-table tr[data-grant-id='{grant_id}']")
        assert "incoming" in incoming.inner_text() and name in incoming.inner_text()
        with other.page.expect_navigation():
            incoming.get_by_role("button", name="Revoke").click()
        assert other.page.url.endswith("/pools?notice=grant_revoked")
        assert other.page.locator(f"#grants-table tr[data-grant-id='{grant_id}']").count() == 0
        assert other.page.goto("/audit?type=admin.pool").status == 200
        assert grant_id in other.page.locator("#audit-table").inner_text()
        assert not other.errors, other.errors
    finally:
        other.close()
    assert page.goto("/audit?type=admin.pool").status == 200
    assert grant_id in page.locator("#audit-table").inner_text()
    assert not admin.errors, admin.errors


def test_the_owner_sets_a_runners_labels_price_and_pool(admin: Session, stack: Stack) -> None:
    page = admin.page
    assert page.goto("/runners").status == 200
    card = page.locator(f"[data-runner-id='{stack.runner_id}']")
    card.locator("summary", has_text="Settings").click()
    card.locator(f"#labels-{stack.runner_id}").fill("site=lab-9, region=eu")
    card.locator(f"#price-{stack.runner_id}").fill("2.5")
    with page.expect_navigation():
        card.get_by_role("button", name="Save").click()
    assert page.url.endswith("/runners?notice=runner_saved"), page.url
    card = page.locator(f"[data-runner-id='{stack.runner_id}']")
    text = card.inner_text()
    assert "site=lab-9" in text and "region=eu" in text and "$2.50/h" in text, text
    admin.shot("runner-settings")
    # Out of bounds is refused with a message, and nothing changes.
    card.locator("summary", has_text="Settings").click()
    card.locator(f"#price-{stack.runner_id}").fill("1e9")
    with page.expect_navigation():
        card.get_by_role("button", name="Save").click()
    assert "0 to 1000" in page.locator("[role=alert]").first.inner_text()
    assert admin.errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    admin.errors.clear()  # the refusal's own status, as intended
    card = page.locator(f"[data-runner-id='{stack.runner_id}']")
    card.locator("summary", has_text="Settings").click()
    card.locator(f"#labels-{stack.runner_id}").fill("")
    card.locator(f"#price-{stack.runner_id}").fill("0.1")
    with page.expect_navigation():
        card.get_by_role("button", name="Save").click()
    assert page.url.endswith("/runners?notice=runner_saved")
    assert not admin.errors, admin.errors
