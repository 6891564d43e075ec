"""Throughput with one and with two control-plane replicas, in one run (issue 13).

Both setups are the production shape of docs/deploy.md: PostgreSQL, Redis,
``control-plane serve`` replicas on one database, and two runners attached
(``--attach``) to one SIMULATED engine (bench/sim_engine.py, no model, so the
gateway rather than the engine saturates):

* ``1 replica``  — replica A; both runners dial A; every client talks to A;
* ``2 replicas`` — replicas A and B; one runner dials each; clients alternate
  between A and B (what a load balancer does), so a request may land on the
  replica that does not hold the chosen runner's tunnel and be relayed
  through Redis.

The two setups run side by side (separate databases and Redis prefixes) and
the measured phases alternate between them, so both see the same machine.
Closed-loop streaming clients; short completions, so the per-request work
(authentication, routing, scheduling, records, audit) dominates — that is
the work a second replica spreads.

On a 2-core machine the load generator, the engine, two runners and the
replicas all share the cores: a second replica can only use what the rest
leaves. The table says how much CPU each part took.

    .venv/bin/python bench/bench_replicas.py [--quick|--full] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)

from bench.load import (
    Conn,
    ProcWatch,
    Sample,
    chat_body,
    load_at_end,
    machine,
    pct,
    run_async,
    stream_request,
    write_section,
)
from harness.databases import REDIS_URL
from harness.databases import database as _database
from harness.databases import drop_keys as _drop_keys
from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from harness.stack import Engine, start_engine

BEGIN, END = "<!-- replicas:begin -->", "<!-- replicas:end -->"


@dataclass
class Setup:
    name: str
    replicas: list[ControlPlaneProcess]
    runners: list[RunnerProcess]
    key: str
    model: str
    prefix: str
    db: Iterator[str]
    samples: list[Sample] = field(default_factory=list)
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)

    def pids(self, engine: Engine) -> dict[str, int]:
        out = {f"replica {'AB'[i]}": cp.proc.pid for i, cp in enumerate(self.replicas)}  # type: ignore[union-attr]
        out |= {f"runner {i + 1}": r.proc.pid for i, r in enumerate(self.runners)}  # type: ignore[union-attr]
        return out | {"engine": engine.proc.pid}

    def stop(self) -> None:
        for r in self.runners:
            r.stop(timeout=10)
        for cp in self.replicas:
            cp.stop()
        _drop_keys(self.prefix)
        self.db.close()


def start_setup(name: str, replicas: int, engine: Engine, tmp: Path, capacity: int) -> Setup:
    db = _database("postgres", tmp)
    url = next(db)
    prefix = f"bench-{secrets.token_hex(4)}"
    env = {
        "OUTPOST_REDIS_URL": REDIS_URL,
        "OUTPOST_CLUSTER_KEY_PREFIX": prefix,
        "OUTPOST_LOG_LEVEL": "warning",
        # Replicas on one database sign the audit chain with one key.
        "OUTPOST_AUDIT_KEY_FILE": str(tmp / "audit-key.json"),
        "OUTPOST_SCHEDULER_MAX_QUEUE": "100000",
    }
    cps = [ControlPlaneProcess(tmp / f"cp{i}", url, extra_env=env) for i in range(replicas)]
    setup = Setup(name, cps, [], "", "", prefix, db)
    try:
        for cp in cps:  # one after the other: the first runs the migrations
            cp.start()
        # An admin key: the benchmark also lists runners (GET /api/runners) to know both replicas
        # see them.
        setup.key = cps[0].cli("keys", "create", "bench", "--admin").splitlines()[-1]
        for i in range(2):
            dial = cps[i % replicas]
            runner = RunnerProcess(
                cps[0],
                tmp / f"runner{i}",
                f"bench-runner-{i}",
                url=dial.url,
                extra_env={"OUTPOST_LOG_LEVEL": "warning"},
                args=["--attach", engine.url, "--parallel", str(capacity), "--connections", "1"],
            )
            setup.runners.append(runner.start())
        for runner in setup.runners:
            runner_id = runner.wait_connected(setup.key)
            for cp in cps:  # every replica must see every runner before load starts
                wait_until(
                    lambda cp=cp, rid=runner_id: _sees(cp, setup.key, rid),
                    60,
                    f"{runner_id} on {cp.url}",
                )
        setup.model = cps[0].models(setup.key)[0]
    except BaseException:
        setup.stop()
        raise
    return setup


def _server_cpu() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL and Redis process on this machine.

    A PostgreSQL backend is a long-lived child of the postmaster, which psutil
    does not count under its parent; a backend that exits inside a window
    takes its CPU with it, so the figure is a lower bound.
    """
    import psutil

    out = {"postgres": 0.0, "redis": 0.0}
    for p in psutil.process_iter(["name", "cpu_times"]):
        name, t = p.info["name"] or "", p.info["cpu_times"]
        key = (
            "postgres"
            if name in ("postgres", "postmaster")
            else "redis"
            if name == "redis-server"
            else None
        )
        if key and t is not None:
            out[key] += t.user + t.system
    return out


def _sees(cp: ControlPlaneProcess, key: str, runner_id: str) -> bool:
    import httpx

    rows = httpx.get(
        f"{cp.url}/api/runners", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).json()["data"]
    return any(r["id"] == runner_id and r["connected"] for r in rows)


async def phase(
    setup: Setup, body: bytes, streams: int, seconds: float, watch: ProcWatch | None
) -> None:
    """``streams`` closed-loop clients spread over the setup's replicas for ``seconds``."""
    headers = {"Authorization": f"Bearer {setup.key}"}
    conns = [
        Conn("127.0.0.1", setup.replicas[i % len(setup.replicas)].port) for i in range(streams)
    ]
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        await asyncio.sleep(random.uniform(0, 0.02))
        while time.perf_counter() < deadline:
            await stream_request(conn, "/v1/chat/completions", body, headers, record=samples)

    servers0 = _server_cpu()
    if watch is not None:
        watch.start()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker(c)) for c in conns]
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    if watch is not None:
        watch.stop()
        watch.cpu_s |= {k: v - servers0[k] for k, v in _server_cpu().items()}
    window = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.close()
    if watch is None:
        return
    # Only requests that finished inside the window count towards throughput.
    setup.samples += [s for s in samples if s.done and s.done <= deadline]
    setup.window_s += window
    for k, v in watch.cpu_s.items():
        setup.cpu_s[k] = setup.cpu_s.get(k, 0.0) + v


def summarize(setup: Setup) -> dict:
    ok = [s for s in setup.samples if s.ok]
    errors = sum(1 for s in setup.samples if s.error is not None)
    cp_cpu = sum(v for k, v in setup.cpu_s.items() if k.startswith("replica"))
    return {
        "setup": setup.name,
        "requests": len(ok),
        "errors": errors,
        "req_s": len(ok) / setup.window_s if setup.window_s else math.nan,
        "tok_s": sum(s.tokens for s in ok) / setup.window_s if setup.window_s else math.nan,
        "ttft_p50_ms": pct([s.ttft for s in ok if s.ttft is not None], 50) * 1e3,
        "ttft_p99_ms": pct([s.ttft for s in ok if s.ttft is not None], 99) * 1e3,
        "lat_p50_ms": pct([s.done - s.sent for s in ok], 50) * 1e3,
        "lat_p99_ms": pct([s.done - s.sent for s in ok], 99) * 1e3,
        "cp_cores": cp_cpu / setup.window_s if setup.window_s else math.nan,
        "cp_ms_per_request": cp_cpu / len(ok) * 1e3 if ok else math.nan,
        "runner_cores": sum(v for k, v in setup.cpu_s.items() if k.startswith("runner"))
        / setup.window_s,
        "engine_cores": setup.cpu_s.get("engine", math.nan) / setup.window_s,
        "db_cores": setup.cpu_s.get("postgres", math.nan) / setup.window_s,
        "redis_cores": setup.cpu_s.get("redis", math.nan) / setup.window_s,
    }


def table(rows: list[dict], args: argparse.Namespace, started: str, engine: Engine) -> str:
    one = next(r for r in rows if r["setup"] == "1 replica")
    lines = [
        "## Replicas: one vs two control-plane replicas (`bench/bench_replicas.py`)",
        "",
        f"Machine: {started}; {load_at_end()}.",
        f"Taken: {time.strftime('%Y-%m-%d %H:%M %Z')}. {args.note}".rstrip(),
        (
            "Stack: PostgreSQL + Redis on this machine; `control-plane serve` replicas on one "
            "database; two "
            f"`runner local-runner --attach` runners (`--parallel {args.capacity}`), one per "
            "replica with two "
            f"replicas, both on replica A with one. Engine: {engine.describe}."
        ),
        (
            f"Method: {args.streams} closed-loop streaming clients (spread evenly over the "
            f"replicas), {args.max_tokens} unpaced tokens per request; {args.rounds} rounds × "
            f"{args.phase_s:g} s per setup, alternating; a request counts when it finished inside "
            "a window. CPU: all cores, whole window; PostgreSQL and Redis are the machine's "
            "shared servers, so their CPU includes anything else using them."
        ),
        f"Reproduce: `{args.command}`.",
        "",
        (
            "| setup | requests | errors | req/s | tok/s | vs 1 replica | TTFT p50 ms | TTFT p99 "
            "ms | latency p50 ms | latency p99 ms | control-plane cores | CP CPU ms/request | "
            "runner cores | engine cores | PostgreSQL cores | Redis cores |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["req_s"] / one["req_s"] if one["req_s"] else math.nan
        lines.append(
            f"| {r['setup']} | {r['requests']} | {r['errors']} | {r['req_s']:.1f} | "
            f"{r['tok_s']:,.0f} "
            f"| **{ratio:.2f}×** | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
            f"{r['lat_p50_ms']:.1f} "
            f"| {r['lat_p99_ms']:.1f} | {r['cp_cores']:.2f} | {r['cp_ms_per_request']:.1f} "
            f"| {r['runner_cores']:.2f} | {r['engine_cores']:.2f} | {r['db_cores']:.2f} "
            f"| {r['redis_cores']:.2f} |"
        )
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, setups: list[Setup], engine: Engine) -> list[dict]:
    for s in setups:  # warm up: connections, caches, prepared statements
        await phase(s, chat_body(s.model, args.max_tokens), args.streams, 2.0, None)
    for r in range(args.rounds):
        for s in setups if r % 2 == 0 else reversed(setups):
            await asyncio.sleep(1.0)  # the previous phase's cut requests end
            await phase(
                s,
                chat_body(s.model, args.max_tokens),
                args.streams,
                args.phase_s,
                ProcWatch(s.pids(engine)),
            )
    return [summarize(s) for s in setups]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--capacity", type=int, default=32, help="each runner's --parallel")
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.rounds, args.phase_s = (4, 20.0) if args.full else (2, 8.0)
    args.command = ".venv/bin/python bench/bench_replicas.py " + " ".join(sys.argv[1:])
    started = machine()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-replicas-"))
    engine = start_engine("sim", log_dir=tmp)
    setups: list[Setup] = []
    try:
        setups.append(start_setup("1 replica", 1, engine, tmp / "one", args.capacity))
        setups.append(start_setup("2 replicas", 2, engine, tmp / "two", args.capacity))
        rows = run_async(run(args, setups, engine))
    finally:
        for s in setups:
            s.stop()
        engine.stop()
    text = table(rows, args, started, engine)
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)
    return 0 if all(r["requests"] and not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
