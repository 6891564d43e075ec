"""Real processes for end-to-end tests: a control plane and runners on free ports.

Modelled on vLLM's ``RemoteOpenAIServer``: start the real server, wait for its
health endpoint, and drive it with real clients.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:
    from outpost.control_plane.db.engine import Database

T = TypeVar("T")

__all__ = ["ControlPlaneProcess", "RunnerProcess", "free_port", "wait_until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _tool(name: str) -> list[str]:
    module = {"control-plane": "outpost.control_plane.cli", "runner": "outpost.runner.cli"}[name]
    return [sys.executable, "-m", module]


class _Process:
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ControlPlaneProcess(_Process):
    def __init__(
        self,
        state_dir: Path,
        database_url: str,
        extra_env: dict[str, str] | None = None,
        port: int | None = None,
        *,
        shared_pool: bool = True,
    ) -> None:
        """``shared_pool``: the ``default`` tenant is the platform operator and grants its default
        pool to every tenant, as a lab whose one runner serves several tenants sets it up; the
        tests of pool isolation pass ``False``."""
        self.state_dir = state_dir
        self.database_url, self.shared_pool = database_url, shared_pool
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OUTPOST_STATE_DIR": str(state_dir),
            "OUTPOST_DATABASE_URL": database_url,
            "OUTPOST_PORT": str(self.port),
            **(extra_env or {}),
        }
        self.log_path = state_dir / f"control-plane-{self.port}.log"

    def start(self) -> ControlPlaneProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*_tool("control-plane"), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200,
            60,
            f"control plane on {self.url}\n{self.log()}",
        )
        if self.shared_pool:
            run_db(self.database_url, share_default_pool)
        return self

    def cli(self, *args: str) -> str:
        """Run a ``control-plane`` subcommand against this instance's database; return stdout."""
        out = subprocess.run(
            [*_tool("control-plane"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"control-plane {' '.join(args)} failed: {out.stderr}")
        return out.stdout.strip()

    def api_key(self, tenant: str = "default", name: str = "test") -> str:
        return self.cli("keys", "create", name, "--tenant", tenant).splitlines()[-1]

    def enrollment_token(self, runner_name: str, tenant: str = "default") -> str:
        return self.cli("runners", "enroll", runner_name, "--tenant", tenant).splitlines()[-1]

    def models(self, api_key: str) -> list[str]:
        resp = httpx.get(
            f"{self.url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=5
        )
        return [m["id"] for m in resp.json().get("data", [])]


class RunnerProcess(_Process):
    def __init__(
        self,
        control_plane: ControlPlaneProcess,
        state_dir: Path,
        name: str,
        args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        url: str | None = None,
    ) -> None:
        self.cp = control_plane
        self.url = (
            url or control_plane.url
        )  # a ChaosProxy in front of the control plane, in fault tests
        self.state_dir = state_dir
        self.name = name
        self.args = args or []
        self.extra_env = extra_env or {}
        self.log_path = state_dir / "runner.log"

    def start(self, token: str | None = None) -> RunnerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env}
        env.pop("OUTPOST_DATABASE_URL", None)
        if token is None and not (self.state_dir / "identity.json").exists():
            token = self.cp.enrollment_token(self.name)
        if token:
            env["OUTPOST_ENROLLMENT_TOKEN"] = token
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *_tool("runner"),
                    "local-runner",
                    "--control-plane",
                    self.url,
                    "--state-dir",
                    str(self.state_dir),
                    "--threads",
                    "1",
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def identity(self) -> dict:
        import json

        return json.loads((self.state_dir / "identity.json").read_text())

    def wait_connected(self, api_key: str, timeout: float = 120) -> str:
        """Wait until the control plane lists this runner as connected; return its id."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"runner exited with {self.proc.returncode}:\n{self.log()}")
            if not (self.state_dir / "identity.json").exists():
                return False
            rid = self.identity()["runner_id"]
            resp = httpx.get(
                f"{self.cp.url}/api/runners",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=5,
            )
            return any(r["id"] == rid and r["connected"] for r in resp.json()["data"])

        wait_until(ready, timeout, f"runner {self.name}\n{self.log()}")
        return self.identity()["runner_id"]


def run_db(url: str, fn: Callable[[Database], Coroutine[Any, Any, T]]) -> T:
    """Run ``fn`` with a fresh :class:`Database` on ``url`` from synchronous test code, then
    dispose of it."""
    from outpost.control_plane.db.engine import Database

    async def main() -> T:
        db = Database(url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from async code (the benchmarks start stacks from their event loop): its own thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def share_default_pool(db: Database, tenant: str = "default") -> str:
    """Make ``tenant`` the platform operator and grant its default pool to every tenant; returns
    the grant id."""
    from outpost.control_plane.actions.pools import EVERY_TENANT, give_grant
    from outpost.control_plane.store.pools import default_pool
    from outpost.control_plane.store.tenants import get_or_create_tenant

    async with db.session() as session:
        owner = await get_or_create_tenant(session, tenant)
        owner.platform_operator = True
        grant = await give_grant(
            session,
            owner,
            await default_pool(session, owner.id),
            EVERY_TENANT,
            actor="operator:tests",
        )
        await session.commit()
        return grant.id


def tenant_records(database_url: str, tenant: str) -> list[dict]:
    """The request records of a tenant, by name or id, read straight from the database."""
    from sqlalchemy import create_engine, text

    from outpost.control_plane.db.engine import sync_url

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.* FROM request_records r JOIN tenants t ON t.id = r.tenant_id "
                    "WHERE t.name = :n OR t.id = :n"
                ),
                {"n": tenant},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


@contextmanager
def one_slot_stack(
    tmp: Path, ctx: int
) -> Iterator[tuple[ControlPlaneProcess, RunnerProcess, str, str]]:
    """A control plane on SQLite and a runner with one llama.cpp slot and no fair headroom.

    One slot makes what runs and what queues exact. Yields (control plane, runner,
    runner id, database URL); stops both afterwards.
    """
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url).start()
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        "one-slot",
        args=["--parallel", "1", "--headroom", "0", "--ctx", str(ctx)],
    )
    try:
        admin = cp.cli("keys", "create", "boot", "--admin").splitlines()[-1]
        runner.start()
        yield cp, runner, runner.wait_connected(admin), url
    finally:
        runner.stop()
        cp.stop()
