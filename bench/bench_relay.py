"""The relay at GPU rates (issue 24): direct vs Outpost vs LiteLLM's proxy, one engine, one run.

Three paths to one simulated engine (bench/sim_engine.py), measured by the
same lean client (bench/load.py), alternating within every round (the order
rotates each round, so load from other work on the machine falls on all):

``direct``   client → engine;
``outpost``  client → control plane → tunnel → runner (``--attach``) → engine;
``litellm``  client → LiteLLM's proxy (one worker, no database, a config of
             its own: ``litellm[proxy]``, the ``bench`` extra) → engine.

Scenarios: 64 and 256 streams × 50 tokens/s each, ramped in (steady load);
16 streams of 4-token requests, unpaced (requests per second); and with
``--sweep``, the relay's capacity: paced streams at rising counts, one runner
and one control plane, and the highest aggregate tokens/s at which
outpost ÷ direct stays ≥ 0.97. Each ratio is printed next to the CPU each
side spent per token (µs of CPU ÷ tokens delivered in the window).

    .venv/bin/python bench/bench_relay.py [--rounds 3] [--phase-s 4] [--no-litellm] [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)
import httpx

from bench.bench_overhead import PathResult, Scenario, phase
from bench.load import ProcWatch, load_at_end, machine, run_async, write_section
from harness import processes
from harness.processes import free_port, wait_until
from harness.stack import Engine, Stack, pids, start_engine, start_stack

BEGIN, END = "<!-- relay:begin -->", "<!-- relay:end -->"
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2  # LiteLLM refuses to start with a weak one


class LiteLLM:
    """LiteLLM's proxy in front of ``engine``, one worker, no database, its own config file."""

    def __init__(self, engine: Engine, model: str, tmp: Path) -> None:
        self.port = free_port()
        config = tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {engine.url}/v1\n"
            "      api_key: none\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        exe = Path(sys.executable).parent / "litellm"
        argv = [str(exe), "--config", str(config), "--port", str(self.port), "--num_workers", "1"]
        # No network on a bench machine: the cost map shipped with the package.
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        log = open(tmp / "litellm.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        wait_until(lambda: self._alive() and _ok(url), 180, "LiteLLM proxy")
        import litellm  # noqa: PLC0415 - only to name the version in the table

        self.version = getattr(litellm, "__version__", "") or _dist_version("litellm")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited with {self.proc.returncode}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _dist_version(name: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(name)


async def run(
    sc: Scenario,
    targets: dict[str, tuple[int, dict[str, str]]],
    watched: dict[str, int],
    model: str,
    rounds: int,
    seconds: float,
) -> dict[str, PathResult]:
    results = {path: PathResult() for path in targets}
    body = sc.body(model)
    for path, (port, headers) in targets.items():  # warm up every path
        await phase(port, headers, body, sc.streams, min(2.0, seconds), None, sc.ramp_s)
    names = list(targets)
    for r in range(rounds):
        for path in names[r % len(names) :] + names[: r % len(names)]:
            port, headers = targets[path]
            watch = ProcWatch(watched)
            samples, tokens, window = await phase(
                port, headers, body, sc.streams, seconds, watch, sc.ramp_s
            )
            results[path].add(samples, tokens, window, watch)
            # LiteLLM keeps working on the requests cut at the end of its phase for a while.
            await asyncio.sleep(3.0 if path == "litellm" else 0.5)
    return results


def _us_per_token(r: PathResult, proc: str) -> float:
    cpu = r.cpu_s.get(proc, math.nan)
    return cpu / r.tokens_in_window * 1e6 if r.tokens_in_window else math.nan


def row(sc: Scenario, res: dict[str, PathResult]) -> dict[str, object]:
    d = res["direct"]
    out: dict[str, object] = {
        "scenario": sc.name,
        "streams": sc.streams,
        "rate": sc.tokens_per_s or 0.0,
    }
    for path, r in res.items():
        reqs = len(r.ok)
        suffix = " (before)" if path == "before" else ""
        out[path] = {
            "tok_s": r.tok_s,
            "req_s": reqs / r.window_s if r.window_s else math.nan,
            "errors": r.errors,
            "ttft_p50_ms": r.ttft(50) * 1e3,
            "ttft_p99_ms": r.ttft(99) * 1e3,
            "ratio": r.tok_s / d.tok_s if d.tok_s else math.nan,
            "added_ttft_p50_ms": (r.ttft(50) - d.ttft(50)) * 1e3,
            "added_ttft_p99_ms": (r.ttft(99) - d.ttft(99)) * 1e3,
            "cp_us_per_token": _us_per_token(r, "control plane" + suffix),
            "runner_us_per_token": _us_per_token(r, "runner" + suffix),
            "litellm_us_per_token": _us_per_token(r, "litellm"),
            # What every path needs alike: the engine and the client (the benchmark process).
            "shared_us_per_token": _us_per_token(r, "engine") + _us_per_token(r, "client"),
        }
    return out


def _ceiling(r: dict, path: str) -> float:
    """Tokens/s this machine's cores could carry at the path's measured CPU per token: all of
    the engine's, the client's and the gateway's processes on ``os.cpu_count()`` cores."""
    own = {
        "direct": 0.0,
        "outpost": r["cp_us_per_token"] + r["runner_us_per_token"],
        "before": r["cp_us_per_token"] + r["runner_us_per_token"],
        "litellm": r["litellm_us_per_token"],
    }[path]
    return (os.cpu_count() or 1) * 1e6 / (r["shared_us_per_token"] + own)


def _cell(v: object, fmt: str) -> str:
    return "–" if not isinstance(v, int | float) or math.isnan(v) else format(v, fmt)


def _own(r: dict, key: str, path: str) -> str:
    """A CPU cell only for the path's own processes (others idle through its phases)."""
    mine = key == "litellm_us_per_token" if path == "litellm" else path in ("outpost", "before")
    if key == "litellm_us_per_token" and path != "litellm":
        mine = False
    return _cell(r[key], ".0f") if mine else "–"


def table(rows: list[dict], sweep: list[dict], args: argparse.Namespace) -> str:
    paths = [p for p in ("direct", "outpost", "before", "litellm") if rows and p in rows[0]]
    lines = [
        "## The relay at GPU rates: direct, Outpost and LiteLLM (`bench/bench_relay.py`)",
        "",
        f"Machine: {args.started}; {load_at_end()}.",
        f"Taken: {time.strftime('%Y-%m-%d %H:%M %Z')}. {args.note}".rstrip(),
        f"Paths: {', '.join(paths)}; one SIMULATED engine (`bench/sim_engine.py`) behind all; "
        "Outpost = `control-plane serve` (SQLite, records and audit written) + one runner "
        f"`--attach` with 2 tunnel connections{args.litellm_line}.",
        f"Method: {args.rounds} rounds × {args.phase_s:g} s per path, order rotated each round; "
        "paced scenarios ramped in over one request (64 tokens at 50 tok/s) and measured after it; "
        "ratio = tokens/s of the path ÷ direct; CPU µs/token = CPU seconds of that process in the "
        "windows ÷ tokens delivered in them; engine + client = the CPU every path needs alike; "
        f"CPU ceiling = {os.cpu_count()} cores ÷ (engine + client + the path's own processes) "
        "per token: the most tokens/s this machine could carry at the path's measured cost.",
        f"Reproduce: `{args.command}`.",
        "",
        "| scenario | path | tok/s | req/s | errors | TTFT p50 ms | TTFT p99 ms | ÷ direct "
        "| added TTFT p99 ms | CPU µs/token: control plane | runner | LiteLLM | engine + client "
        "| CPU ceiling tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rw in rows:
        for path in paths:
            r = rw[path]
            first = rw["scenario"] if path == "direct" else ""
            ratio = "" if path == "direct" else f"**{r['ratio']:.3f}**"
            added = "" if path == "direct" else _cell(r["added_ttft_p99_ms"], "+.1f")
            lines.append(
                f"| {first} | {path} | {_cell(r['tok_s'], ',.0f')} | {_cell(r['req_s'], ',.0f')} "
                f"| {r['errors']} | {_cell(r['ttft_p50_ms'], '.1f')} "
                f"| {_cell(r['ttft_p99_ms'], '.1f')} | {ratio} | {added} "
                f"| {_own(r, 'cp_us_per_token', path)} "
                f"| {_own(r, 'runner_us_per_token', path)} "
                f"| {_own(r, 'litellm_us_per_token', path)} "
                f"| {_cell(r['shared_us_per_token'], '.0f')} | {_cell(_ceiling(r, path), ',.0f')} |"
            )
    if sweep:
        old = "before" in sweep[0]
        lines += [
            "",
            "Relay capacity (paced streams, ramped; no LiteLLM):",
            "",
            "| streams × tok/s | offered tok/s | direct tok/s | Outpost tok/s | ÷ direct "
            "| added TTFT p99 ms | CPU µs/token: control plane | runner | engine + client "
            "| CPU ceiling tok/s |"
            + (" before ÷ direct | before CPU µs/token: control plane | runner |" if old else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|---:|---:|" if old else ""),
        ]
        for rw in sweep:
            d, t = rw["direct"], rw["outpost"]
            line = (
                f"| {rw['streams']} × {rw['rate']:g} | {rw['streams'] * rw['rate']:,.0f} "
                f"| {d['tok_s']:,.0f} "
                f"| {t['tok_s']:,.0f} | **{t['ratio']:.3f}** | {t['added_ttft_p99_ms']:+.1f} "
                f"| {_cell(t['cp_us_per_token'], '.0f')} "
                f"| {_cell(t['runner_us_per_token'], '.0f')} "
                f"| {_cell(t['shared_us_per_token'], '.0f')} "
                f"| {_cell(_ceiling(t, 'outpost'), ',.0f')} |"
            )
            if old:
                b = rw["before"]
                line += (
                    f" {b['ratio']:.3f} | {_cell(b['cp_us_per_token'], '.0f')} "
                    f"| {_cell(b['runner_us_per_token'], '.0f')} |"
                )
            lines.append(line)
        held = [rw for rw in sweep if rw["outpost"]["ratio"] >= 0.97]
        best = max((rw["direct"]["tok_s"] for rw in held), default=math.nan)
        lines += [
            "",
            f"Highest aggregate rate Outpost held at ≥ 0.97 of direct: {_cell(best, ',.0f')} "
            "tok/s.",
        ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    tmp = Path(args.tmp)
    args.started = machine()
    engine = start_engine("sim", parallel=512, log_dir=tmp)
    stack: Stack | None = None
    stacks: list[Stack] = []
    proxy: LiteLLM | None = None
    rows: list[dict] = []
    sweep: list[dict] = []
    try:
        # 256: the most a runner's --parallel takes; the sweep stays within one runner.
        stack = start_stack(engine, capacity=256, tmp=tmp / "stack")
        watched = pids(stack, engine)
        targets = {
            "direct": (engine.port, {}),
            "outpost": (stack.port, {"Authorization": f"Bearer {stack.key}"}),
        }
        args.litellm_line = ""
        if args.baseline is not None:
            # The same stack from an older checkout: ``python -m`` puts the working directory
            # first on sys.path, so processes started from there import its ``outpost``.
            # The harness's in-process database step (share_default_pool) is this checkout's
            # code and schema, not the older one's: skipped for that stack.
            here, run_db = os.getcwd(), processes.run_db
            os.chdir(args.baseline)
            processes.run_db = lambda *_a, **_k: None  # type: ignore[assignment]
            try:
                before = start_stack(engine, capacity=256, tmp=tmp / "before")
            finally:
                os.chdir(here)
                processes.run_db = run_db
            stacks.append(before)
            targets["before"] = (before.port, {"Authorization": f"Bearer {before.key}"})
            watched["control plane (before)"] = before.cp.proc.pid  # type: ignore[union-attr]
            watched["runner (before)"] = before.runners[0].proc.pid  # type: ignore[union-attr]
            args.litellm_line += f"; before = the same stack from {args.baseline_name}"
        if not args.no_litellm:
            proxy = LiteLLM(engine, stack.model, tmp)
            targets["litellm"] = (proxy.port, {"Authorization": f"Bearer {MASTER_KEY}"})
            watched["litellm"] = proxy.proc.pid
            args.litellm_line = f"; LiteLLM {proxy.version} proxy, 1 worker, no database"
        scenarios = [
            Scenario("sim", 64, 64, 50.0, ramped=True),
            Scenario("sim", 256, 64, 50.0, ramped=True),
            Scenario("sim", 16, 4, 0),
        ]
        if args.scenario:
            scenarios = [sc for sc in scenarios if args.scenario in sc.name]
        for sc in scenarios:
            print(f"running {sc.name} …", file=sys.stderr, flush=True)
            res = await run(sc, targets, watched, stack.model, args.rounds, args.phase_s)
            rows.append(row(sc, res))
            print(rows[-1], file=sys.stderr, flush=True)
        if args.sweep:
            pair = {k: v for k, v in targets.items() if k != "litellm"}
            for point in args.sweep_points:
                n, rate = (int(x) for x in point.split("x"))
                sc = Scenario("sim", n, 64, float(rate), ramped=True)
                print(f"sweep: {sc.name} …", file=sys.stderr, flush=True)
                res = await run(sc, pair, watched, stack.model, args.rounds, args.phase_s)
                sweep.append(row(sc, res))
                print(sweep[-1], file=sys.stderr, flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        for st in [stack, *stacks]:
            if st is not None:
                st.stop()
        engine.stop()
    return rows, sweep


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phase-s", type=float, default=4.0)
    p.add_argument("--scenario", help="only scenarios whose name contains this")
    p.add_argument("--no-litellm", action="store_true", help="two paths only")
    p.add_argument("--sweep", action="store_true", help="also the relay-capacity sweep")
    # streams x tokens/s each; a runner takes at most 256 streams, so past that the rate rises.
    p.add_argument(
        "--sweep-points",
        type=lambda s: s.split(","),
        default=["64x50", "128x50", "256x50", "256x100", "256x200"],
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="also run the Outpost stack of this older checkout (e.g. `git archive <commit>` "
        "unpacked), as path 'before', in the same rounds",
    )
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.baseline_name = args.baseline.name if args.baseline else ""
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        commit = args.baseline / ".commit"
        args.baseline_name = commit.read_text().strip() if commit.exists() else str(args.baseline)
    args.command = shlex.join(
        [".venv/bin/python", "bench/bench_relay.py", *(argv if argv is not None else sys.argv[1:])]
    )
    args.tmp = tempfile.mkdtemp(prefix="outpost-relay-")
    try:
        rows, sweep = run_async(main_async(args))
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
    text = table(rows, sweep, args)
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)
    return {"rows": rows, "sweep": sweep, "text": text}


if __name__ == "__main__":
    main()
