"""One real stack for the observability tests: JSON logs on both processes, a metrics token on
the control plane, the runner's loopback metrics listener on."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ControlPlaneProcess, RunnerProcess, free_port
from tests.conftest import Stack, _database


class ObservedStack(Stack):
    metrics_token: str
    runner_metrics_port: int

    def scrape(self, token: str | None = None) -> dict[tuple[str, frozenset], float]:
        resp = httpx.get(
            f"{self.cp.url}/metrics",
            timeout=10,
            headers={"Authorization": f"Bearer {token or self.metrics_token}"},
        )
        resp.raise_for_status()
        return samples(resp.text)

    def scrape_runner(self) -> dict[tuple[str, frozenset], float]:
        resp = httpx.get(f"http://127.0.0.1:{self.runner_metrics_port}/metrics", timeout=10)
        resp.raise_for_status()
        return samples(resp.text)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (name, labels), parsed by prometheus_client's own
    parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    tmp = tmp_path_factory.mktemp("observed")
    db = _database("sqlite", tmp)
    url = next(db)
    token = secrets.token_urlsafe(24)
    cp = ControlPlaneProcess(
        tmp / "cp", url, extra_env={"OUTPOST_LOG_FORMAT": "json", "OUTPOST_METRICS_TOKEN": token}
    ).start()
    port = free_port()
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        "observed",
        args=["--metrics-port", str(port)],
        extra_env={"OUTPOST_LOG_FORMAT": "json"},
    )
    try:
        api_key = cp.api_key()
        runner.start()
        runner_id = runner.wait_connected(api_key)
        stack = ObservedStack(cp, runner, api_key, url, runner_id)
        stack.metrics_token, stack.runner_metrics_port = token, port
        yield stack
    finally:
        runner.stop()
        cp.stop()
        db.close()
