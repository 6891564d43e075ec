"""Browser fixtures: Debian's headless Chromium driven by Playwright, against the real stack.

Screenshots go to ``$OUTPOST_TEST_ARTIFACTS/console`` (default
``build/test-artifacts/console``), one folder per database backend.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import Stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple"
ARTIFACTS = Path(
    os.environ.get("OUTPOST_TEST_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts")
)


@dataclass(frozen=True)
class Account:
    email: str
    role: str
    tenant: str
    password: str = PASSWORD


@dataclass(frozen=True)
class Accounts:
    admin: Account
    viewer: Account
    other_admin: Account  # an admin of another tenant
    lockable: Account


T = TypeVar("T")


def in_database(database_url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``fn(session)`` against the stack's database and commit (set-up and checks, not the
    system under test)."""
    from outpost.control_plane.db.engine import Database

    async def go() -> T:
        db = Database(database_url)
        try:
            async with db.session() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    # Playwright's sync API runs an event loop on this thread: use another one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def make_user(database_url: str, account: Account) -> str:
    """Create a console user directly in the stack's database (the CLI has its own test)."""
    from outpost.control_plane.console.passwords import hash_password
    from outpost.control_plane.store.tenants import get_or_create_tenant
    from outpost.control_plane.store.users import create_user

    async def go(session: AsyncSession) -> str:
        tenant = await get_or_create_tenant(session, account.tenant)
        user = await create_user(
            session,
            tenant_id=tenant.id,
            email=account.email,
            password_hash=hash_password(account.password),
            role=account.role,
        )
        return user.id

    return in_database(database_url, go)


@pytest.fixture(scope="session")
def accounts(stack: Stack) -> Accounts:
    backend = "pg" if stack.database_url.startswith("postgresql") else "sqlite"
    made = Accounts(
        admin=Account(f"admin-{backend}@example.com", "admin", "default"),
        viewer=Account(f"viewer-{backend}@example.com", "viewer", "default"),
        other_admin=Account(f"other-{backend}@example.com", "admin", "other-tenant"),
        lockable=Account(f"lockable-{backend}@example.com", "admin", "default"),
    )
    for account in (made.admin, made.viewer, made.other_admin, made.lockable):
        make_user(stack.database_url, account)
    return made


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Session:
    """One browser context (its own cookies) with helpers; collects console errors (CSP
    violations included)."""

    def __init__(self, browser: object, stack: Stack, shots: Path) -> None:
        self.stack = stack
        self.base = stack.cp.url
        self.shots = shots
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 900}, base_url=self.base
        )  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())  # confirm() of destructive actions

    def login(self, account: Account, password: str | None = None) -> object:
        self.page.goto("/login")
        self.page.fill("#email", account.email)
        self.page.fill("#password", password or account.password)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def csrf(self) -> str:
        return self.page.locator("input[name=csrf_token]").first.get_attribute("value")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="session")
def shots_dir(stack: Stack) -> Path:
    backend = "postgres" if stack.database_url.startswith("postgresql") else "sqlite"
    path = ARTIFACTS / "console" / backend
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def session(browser: object, stack: Stack, shots_dir: Path) -> Iterator[Session]:
    s = Session(browser, stack, shots_dir)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def admin(session: Session, accounts: Accounts) -> Session:
    session.login(accounts.admin)
    assert session.page.url.rstrip("/") == session.base, session.page.url
    return session
