"""A rolling update of a deployment under steady load: how many requests fail (issue 22).

A real control plane and a real runner (embedded SmolLM2, llama.cpp). The embedded model is
deployed under a second name; clients stream chats to that name back to back (bench/load.py's
client); meanwhile the deployment's engine options change, which rolls its one replica: the new
generation is placed beside the old, becomes ready, and only then is the old one undeployed
(it drains its open streams). The numbers: requests answered, requests failed, and TTFT before,
during and after the rollout. Written to bench/README.md between the ``rolling`` markers.

    .venv/bin/python bench/bench_rolling.py --clients 2 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)

from bench.load import (
    Conn,
    Sample,
    chat_body,
    fmt_ms,
    load_at_end,
    machine,
    pct,
    run_async,
    stream_request,
    write_section,
)
from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from harness.stack import start_control_plane, start_runner
from outpost.runner.models import embedded_model_path
from outpost.sdk.client import Client

BEGIN, END = "<!-- rolling:begin -->", "<!-- rolling:end -->"
NAME = "smol-rolled"


async def _client(
    host: str, port: int, key: str, body: bytes, stop: asyncio.Event, out: list[Sample]
) -> None:
    conn = Conn(host, port)
    while not stop.is_set():
        await stream_request(
            conn, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"}, record=out
        )
    conn.close()


def _rolled(sdk: Client, dep_id: str) -> bool:
    d = sdk.deployments.get(dep_id)
    states = {(r.generation, r.state) for r in d.replica_status}
    return d.ready_replicas == 1 and states == {(2, "ready")}


async def _run(args: argparse.Namespace, cp: ControlPlaneProcess, key: str, dep_id: str) -> dict:
    sdk = Client(cp.url, api_key=key, timeout=30)
    stop, samples = asyncio.Event(), []
    body = chat_body(NAME, args.max_tokens)
    tasks = [
        asyncio.create_task(_client("127.0.0.1", cp.port, key, body, stop, samples))
        for _ in range(args.clients)
    ]
    await asyncio.sleep(args.settle_s)
    started = time.perf_counter()
    await asyncio.to_thread(sdk.deployments.update, dep_id, engine_options={**OPTIONS, "ctx": 4096})
    await asyncio.to_thread(wait_until, lambda: _rolled(sdk, dep_id), 900, "generation 2 alone")
    rolled = time.perf_counter()
    await asyncio.sleep(args.settle_s)
    stop.set()
    await asyncio.gather(*tasks)
    return {"samples": samples, "started": started, "rolled": rolled}


OPTIONS = {"parallel": 2, "ctx": 2048, "headroom": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--settle-s", type=float, default=10.0)
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/bench_rolling.py", *sys.argv[1:]])
    head = machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rolling-"))
    models = tmp / "models"
    models.mkdir()
    (models / "smol.gguf").symlink_to(embedded_model_path())
    cp = start_control_plane(tmp, {"OUTPOST_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.5"})
    runner: RunnerProcess | None = None
    try:
        key = cp.cli("keys", "create", "bench", "--admin").splitlines()[-1]
        runner = start_runner(
            cp, tmp, "rolling", key, ["--model-dir", str(models), "--parallel", "1"]
        )
        sdk = Client(cp.url, api_key=key, timeout=30)
        dep = sdk.deployments.create(
            name=NAME,
            source={"kind": "path", "path": "smol.gguf"},
            engine="llama.cpp",
            engine_options=OPTIONS,
        )
        wait_until(lambda: sdk.deployments.get(dep.id).ready_replicas == 1, 600, "ready")
        result = run_async(_run(args, cp, key, dep.id))
    finally:
        if runner is not None:
            runner.stop()
        cp.stop()
    write_section(BEGIN, END, _report(args, command, head, result))
    print(_report(args, command, head, result))


def _report(args: argparse.Namespace, command: str, head: str, r: dict) -> str:
    samples: list[Sample] = r["samples"]
    failed = [s for s in samples if s.error or s.status != 200]
    before = [s for s in samples if s.sent < r["started"] and not s.error]
    during = [s for s in samples if r["started"] <= s.sent <= r["rolled"] and not s.error]
    after = [s for s in samples if s.sent > r["rolled"] and not s.error]

    def ttft(group: list[Sample], q: float) -> str:
        return fmt_ms(pct([s.ttft for s in group if s.ttft is not None], q), 0)

    reasons = sorted({(s.error or f"HTTP {s.status}")[:80] for s in failed})
    lines = [
        "## Rolling update under load (`bench/bench_rolling.py`)",
        "",
        f"Machine: {head}; {load_at_end()}.",
        f"Taken: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `{command}`.",
        f"Setup: control plane and one runner (embedded SmolLM2 on llama.cpp, its own model "
        f"with 1 slot); the same GGUF deployed as `{NAME}` ({OPTIONS}); {args.clients} clients "
        f"stream {args.max_tokens}-token chats to `{NAME}` back to back; after "
        f"{args.settle_s:g} s the deployment's `ctx` changes to 4096, which rolls its one "
        "replica on the same runner (new generation ready, then the old one drains).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests answered | {len(samples) - len(failed)} |",
        f"| requests failed | {len(failed)}{' (' + '; '.join(reasons) + ')' if reasons else ''} |",
        f"| rollout (update → new generation alone), s | {r['rolled'] - r['started']:.1f} |",
        f"| requests sent during the rollout | {len(during)} |",
        f"| TTFT p50 / p95 before, ms | {ttft(before, 50)} / {ttft(before, 95)} |",
        f"| TTFT p50 / p95 during, ms | {ttft(during, 50)} / {ttft(during, 95)} |",
        f"| TTFT p50 / p95 after, ms | {ttft(after, 50)} / {ttft(after, 95)} |",
        "",
        "Note: a shared 2-core machine with other sessions' tests running; the TTFT during "
        "the rollout includes the new engine's start competing for the same cores.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
