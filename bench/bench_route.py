"""The router's own cost per request, against the number of runners serving the model (issue 11).

``Router.route`` looks at every runner that serves the requested model
(eligibility, expected wait and cost, then the policy's order), so its cost
grows with the fleet; at 1,000 runners it is a visible part of the control
plane's CPU per request in bench/bench_scale.py. This measures it alone, in
process, on the same simulated hub objects the routing tests use
(harness/sim.py: real ``ConnectedRunner`` and ``Link``, no network), with a
status report on every runner and prefix-affinity keys on the request.

    .venv/bin/python bench/bench_route.py [--quick|--full] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time

import _repo  # noqa: F401 (puts the checkout on sys.path)

from bench.load import machine, write_section
from harness.sim import MODEL, set_status, simulated_runner
from outpost.control_plane.routing.routing import Router, RouteRequest

BEGIN, END = "<!-- route:begin -->", "<!-- route:end -->"


def measure(runners: int, policy: str, repeat: int) -> float:
    """Median seconds of one ``Router.route`` call over ``repeat`` calls, after a warm-up."""
    fleet = [
        simulated_runner(
            f"run_{i:05d}", capacity=16, in_flight=i % 7, usd_per_hour=0.1 + (i % 5) / 10
        )
        for i in range(runners)
    ]
    for r in fleet:
        set_status(r, running=r.in_flight)
    router = Router()
    # A tenant with its own pool and a few granted ones: every runner's pool is checked (issue 19).
    pools = frozenset({"pool_sim", *(f"pool_granted_{i}" for i in range(8))})
    req = RouteRequest(
        model=MODEL,
        policy=policy,
        affinity_keys=("conversation", "system"),  # type: ignore[arg-type]
        prompt_tokens=40,
        max_tokens=64,
        pools=pools,
    )
    for _ in range(10):
        router.route(fleet, req, limit=1)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        router.route(
            fleet, req, limit=1
        )  # as serving.py's first attempt asks: the best candidate only
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    repeat = 500 if args.full else 100
    command = ".venv/bin/python bench/bench_route.py " + " ".join(sys.argv[1:])
    lines = [
        "## Routing cost per request (`bench/bench_route.py`)",
        "",
        f"Machine: {machine()}.",
        (
            f"Taken: {time.strftime('%Y-%m-%d %H:%M %Z')}. Median of {repeat} `Router.route` "
            "calls per cell, in "
            "process, simulated hub objects (harness/sim.py), one status report per runner, "
            "affinity keys on, "
            "`limit=1` as a request's first attempt asks (every runner is still scored)."
        ),
        f"Reproduce: `{command}`.",
        "",
        "| runners serving the model | balanced ms | cost ms | latency ms | µs per runner "
        "(balanced) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in (10, 100, 1000):
        cells = {policy: measure(n, policy, repeat) for policy in ("balanced", "cost", "latency")}
        lines.append(
            f"| {n} | {cells['balanced'] * 1e3:.3f} | {cells['cost'] * 1e3:.3f} "
            f"| {cells['latency'] * 1e3:.3f} | {cells['balanced'] / n * 1e6:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
