"""Deployments in the console, in real headless Chromium against the real stack (issue 22).

An admin deploys a model from the form; the stack's real runner takes the order and, the file
being absent from its model directory, reports the replica failed with its reason, which the page
shows. A bad value is a clear message on the page; scale to 0 and delete undeploy it. The models
the runner was started with are listed as static deployments.
"""

from __future__ import annotations

import secrets
import time

from tests.conftest import Stack
from tests.console.conftest import Session


def _row_text(page: object, name: str) -> str:
    row = page.locator("#deployments-table tbody tr", has_text=name)  # type: ignore[attr-defined]
    return row.inner_text() if row.count() else ""


def _wait_row(page: object, name: str, want: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.goto("/deployments")  # type: ignore[attr-defined]
        text = _row_text(page, name)
        if want in text:
            return text
        time.sleep(1)
    raise AssertionError(f"{want!r} never shown for {name}: {_row_text(page, name)!r}")


def test_deploy_watch_scale_delete(admin: Session, stack: Stack) -> None:
    page = admin.page
    assert page.goto("/deployments").status == 200
    assert page.get_by_role("link", name="Deployments").count() == 1
    assert "smollm2-135m-instruct" in page.locator("#static-table").inner_text()

    name = f"console-{secrets.token_hex(3)}"
    page.fill("#dep-name", "bad name with spaces")
    page.fill("#dep-path", "x.gguf")
    with page.expect_navigation():
        page.get_by_role("button", name="Deploy").click()
    assert "name" in page.locator(".form-error").inner_text()
    assert page.locator("#deployments-table tbody tr", has_text="bad name").count() == 0

    page.fill("#dep-name", name)
    page.fill("#dep-aliases", f"{name}-alias")
    page.fill("#dep-path", "absent/model.gguf")
    page.select_option("#dep-engine", "llama.cpp")
    page.fill("#dep-options", "ctx=2048, parallel=1")
    with page.expect_navigation():
        page.get_by_role("button", name="Deploy").click()
    assert page.url.endswith("/deployments?notice=deployment_created"), page.url
    assert name in _row_text(page, name)

    # The real runner fetched nothing: the replica fails, with the runner's reason on the page.
    text = _wait_row(page, name, "failed")
    assert stack.runner_id in text and "absent/model.gguf" in text, text

    # A second deployment of the same name (B of an A/B): the comparison appears.
    page.fill("#dep-name", name)
    page.fill("#dep-path", "absent/other.gguf")
    page.fill("#dep-weight", "0")
    with page.expect_navigation():
        page.get_by_role("button", name="Deploy").click()
    compare = page.locator(f"section[data-compare-name='{name}'] tbody tr")
    assert compare.count() == 2, page.content()[:2000]
    assert all(r.strip() == "0" for r in compare.locator("td.requests").all_inner_texts())
    admin.shot("deployments")
    second = page.locator("#deployments-table tbody tr", has_text=name).nth(1)
    with page.expect_navigation():
        second.get_by_role("button", name="Delete").click()
    assert page.url.endswith("notice=deployment_deleted"), page.url

    row = page.locator("#deployments-table tbody tr", has_text=name)
    row.locator("input[name=replicas]").fill("0")
    with page.expect_navigation():
        row.get_by_role("button", name="Scale").click()
    assert page.url.endswith("notice=deployment_scaled"), page.url
    assert "0/0" in _row_text(page, name)

    row = page.locator("#deployments-table tbody tr", has_text=name)
    with page.expect_navigation():
        row.get_by_role("button", name="Delete").click()
    assert page.url.endswith("notice=deployment_deleted"), page.url
    deadline = time.monotonic() + 60
    while _row_text(page, name) and time.monotonic() < deadline:
        time.sleep(1)
        page.goto("/deployments")
    assert not _row_text(page, name)
    # No CSP violation, no script error; the one 400 is the bad name's page, on purpose.
    assert [e for e in admin.errors if "status of 400" not in e] == [], admin.errors
