"""Run every benchmark, in bounded time, and rewrite the results in bench/README.md.

    .venv/bin/python bench/run.py --quick     # a few minutes: shorter phases, fewer rounds
    .venv/bin/python bench/run.py --full      # the recorded numbers: longer, the real engine
    everywhere
    .venv/bin/python bench/run.py --quick --only overhead,tunnel

Each benchmark runs as its own process with a time limit, one after the
other (they would otherwise measure each other), and rewrites only its own
marked section of bench/README.md; a benchmark that fails or runs out of
time leaves its previous section in place and is reported as such in the
run summary written between the ``run`` markers.

bench/bench_gpu.py is not part of this run: it needs a GPU and a model path;
run it on a GPU machine (its docstring says how).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from _repo import ROOT

from bench.load import machine, write_section

BEGIN, END = "<!-- run:begin -->", "<!-- run:end -->"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    quick_limit_s: int
    full_limit_s: int
    section: str  # README heading it writes


BENCHES = (
    Bench(
        "overhead",
        "bench_overhead.py",
        ("--quick",),
        ("--full",),
        600,
        1800,
        "Overhead: direct to the engine vs through Outpost",
    ),
    Bench(
        "tunnel",
        "bench_tunnel.py",
        ("--quick",),
        ("--full",),
        180,
        420,
        "Tunnel hop: tunnel vs direct",
    ),
    Bench(
        "scale",
        "bench_scale.py",
        ("--quick",),
        ("--full",),
        600,
        1500,
        "Scale: simulated runners and concurrent streams",
    ),
    Bench("e2e", "bench_e2e.py", ("--iterations", "300"), (), 120, 300, "End-to-end encryption"),
    Bench(
        "e2e-overhead",
        "bench_e2e_overhead.py",
        ("--requests", "60"),
        (),
        300,
        900,
        "End-to-end overhead through the stack",
    ),
    Bench(
        "routing",
        "bench_routing.py",
        ("--users", "8", "--conversations", "1", "--turns", "3"),
        (),
        480,
        1200,
        "Routing: prefix affinity vs round robin",
    ),
    Bench(
        "fairness",
        "bench_fairness.py",
        ("--engine", "sim", "--duration", "12", "--solo", "5", "--warmup", "3"),
        (),
        300,
        900,
        "Tenant fairness on one runner",
    ),
    Bench(
        "route", "bench_route.py", ("--quick",), ("--full",), 120, 300, "Routing cost per request"
    ),
    Bench(
        "replicas",
        "bench_replicas.py",
        ("--quick",),
        ("--full",),
        300,
        600,
        "Replicas: one vs two control-plane replicas",
    ),
)


def _stop_group(pgid: int) -> None:
    """Stop anything the benchmark left behind in its process group (by group id)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes (default)")
    mode.add_argument(
        "--full", action="store_true", help="the recorded numbers; about an hour on 2 cores"
    )
    p.add_argument("--only", help="comma-separated: " + ",".join(b.name for b in BENCHES))
    p.add_argument(
        "--note", default="", help="what else ran on the machine; printed with every table"
    )
    args = p.parse_args()
    wanted = set(args.only.split(",")) if args.only else {b.name for b in BENCHES}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    mode = "full" if args.full else "quick"
    command = ".venv/bin/python bench/run.py " + " ".join(sys.argv[1:])
    started, t_start = machine(), time.time()
    results: list[tuple[Bench, str, float]] = []
    for b in BENCHES:
        if b.name not in wanted or not (ROOT / "bench" / b.script).exists():
            continue
        extra = list(b.full if args.full else b.quick)
        if args.note and b.name in ("overhead", "tunnel", "scale", "replicas"):
            extra += ["--note", args.note]
        limit = b.full_limit_s if args.full else b.quick_limit_s
        print(f"== {b.name} ({b.script} {' '.join(extra)}; limit {limit} s)", flush=True)
        t0 = time.monotonic()
        # Its own process group: whatever it started (engines, control planes, runners) is
        # stopped with it, also when it runs out of time.
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / b.script), *extra],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {limit} s limit"
            proc.send_signal(signal.SIGTERM)  # the benchmark stops what it started
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _stop_group(proc.pid)
        results.append((b, status, time.monotonic() - t0))
        print(f"== {b.name}: {status} in {time.monotonic() - t0:.0f} s", flush=True)
    lines = [
        "## Last run (`bench/run.py`)",
        "",
        (
            f"Command: `{command}` ({mode} mode), started "
            f"{time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(t_start))}, "
            f"{(time.time() - t_start) / 60:.1f} minutes in all."
        ),
        f"Machine: {started}.",
    ]
    if args.note:
        lines.append(f"Note: {args.note}")
    lines += ["", "| benchmark | script | status | seconds | section |", "|---|---|---|---:|---|"]
    for b, status, secs in results:
        lines.append(f"| {b.name} | `bench/{b.script}` | {status} | {secs:.0f} | {b.section} |")
    write_section(BEGIN, END, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s == "ok" for _, s, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
