"""A stack for the dialect front doors (/v1/responses, /v1/messages): a control plane on SQLite and
one runner with the embedded model, in the ``default`` tenant's pool, granted to nobody else, so an
``outsider`` tenant's key shows that these doors keep pools as chat completions does. Streams send
their headers at once (below)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, run_db
from outpost.control_plane.admin import issue_api_key

MODEL = "smollm2-135m-instruct"


@dataclass
class DialectStack:
    cp: ControlPlaneProcess
    runner: RunnerProcess
    database_url: str
    api_key: str  # the default tenant's admin key: its runner serves it
    runner_id: str

    @property
    def url(self) -> str:
        return self.cp.url

    def key(self, tenant: str, name: str, admin: bool = False) -> tuple[str, str]:
        """A new API key: ``(key_id, secret)``."""
        return run_db(self.database_url, lambda db: issue_api_key(db, tenant, name, admin))


@pytest.fixture(scope="session")
def dialect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DialectStack]:
    tmp = tmp_path_factory.mktemp("dialects")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    # Streams get their headers at once and keep-alives while they wait (openai/early_stream.py),
    # the way a stream waiting in a queue behind a proxy does: every streamed test here reads
    # the dialects through that path, comments and errors as events included.
    early = {"OUTPOST_STREAM_HEADERS_AFTER_S": "0", "OUTPOST_STREAM_KEEPALIVE_S": "0.05"}
    cp = ControlPlaneProcess(tmp / "cp", url, extra_env=early, shared_pool=False).start()
    runner = RunnerProcess(cp, tmp / "runner", "dialects")
    try:
        admin = cp.cli("keys", "create", "boot", "--admin").splitlines()[-1]
        runner.start()
        runner_id = runner.wait_connected(admin)
        yield DialectStack(cp, runner, url, admin, runner_id)
    finally:
        runner.stop()
        cp.stop()
