"""Tenant fairness on one runner: first-come-first-served vs the Virtual Token Counter.

One runner, two tenants. Tenant A ("heavy") keeps ``--heavy`` clients sending
back to back, tenant B ("light") ``--light`` clients: ten times less load by
default. Every request is the same (a short chat prompt, ``--max-tokens``
streamed tokens with ``ignore_eos``), so service differences come from the
scheduler alone. Phases, one after the other on the same runner:

1. solo: tenant B alone, for its reference TTFT;
2. for each round, FCFS then VTC (``--rounds 2`` alternates FCFS, VTC, VTC,
   FCFS so slow drift of a shared machine falls on both equally). The
   policy is a control-plane setting, so the control plane is restarted
   between phases (same port, same database); the runner reconnects.

Measured by the clients, over each phase after ``--warmup`` seconds: B's TTFT
p50/p95, Jain's index of the two tenants' weighted service (input x 1 +
output x 2, per second), the largest service gap (the most weighted tokens by
which A led B at any moment of the phase, B having started even) and total
throughput (output tokens per second). The control plane's own
``/api/fairness/service`` snapshot is kept in the JSON output for comparison.

    .venv/bin/python bench/bench_fairness.py [--engine llama|sim] [--duration S] [--rounds N]
    [--no-write]

``--engine llama`` (default) runs the embedded SmolLM2-135M in llama.cpp;
``--engine sim`` attaches the runner to a simulated OpenAI server defined
here (``--sim-*`` options; the parameters are printed with the table).
The markdown table is written between the fairness markers in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _repo import ROOT

from bench.load import write_section as write_marked_section
from harness.processes import ControlPlaneProcess, RunnerProcess, free_port, wait_until
from outpost.control_plane.routing.service_fairness import jain_index, percentile

README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- fairness:begin -->", "<!-- fairness:end -->"
PROMPT = "Write a short story about a lighthouse keeper and a storm at sea."


# --- the simulated engine (--engine sim) ---------------------------------------------


def serve_sim_engine(port: int, slots: int, prefill_tps: float, decode_tps: float) -> None:
    """An OpenAI-compatible server that only keeps time: ``slots`` requests at once,
    prefill at ``prefill_tps``, then each request streams at ``decode_tps``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    sem = asyncio.Semaphore(slots)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "sim", "object": "model"}]})

    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        n = int(body.get("max_tokens") or 16)

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            obj = {
                "id": "sim",
                "object": "chat.completion.chunk",
                "model": "sim",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                if usage is None
                else [],
            }
            if usage is not None:
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n"

        async def stream() -> AsyncIterator[str]:
            async with sem:
                await asyncio.sleep(prompt / prefill_tps)
                yield chunk({"role": "assistant", "content": ""})
                for _ in range(n):
                    await asyncio.sleep(1 / decode_tps)
                    yield chunk({"content": " w"})
                yield chunk({}, "length")
                yield chunk(
                    {},
                    usage={
                        "prompt_tokens": prompt,
                        "completion_tokens": n,
                        "total_tokens": prompt + n,
                    },
                )
                yield "data: [DONE]\n\n"

        if not body.get("stream"):
            return JSONResponse(
                {"error": {"message": "the simulator streams only"}}, status_code=400
            )
        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(
        routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- clients ----------------------------------------------------------------------------


@dataclass
class Sample:
    tenant: str
    sent: float
    ttft: float | None
    done: float
    prompt_tokens: int
    completion_tokens: int
    ok: bool


@dataclass
class Phase:
    name: str
    policy: str | None
    samples: list[Sample] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    server: dict = field(default_factory=dict)


async def one_request(
    client: httpx.AsyncClient,
    url: str,
    key: str,
    model: str,
    max_tokens: int,
    tenant: str,
    sink: list[Sample] | None = None,
) -> Sample:
    """One streamed request; its sample goes to ``sink`` even when cancelled at the end of a
    phase."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    sent = time.monotonic()
    ttft, usage, ok = None, {}, False
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            if resp.status_code == 200:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if obj.get("usage"):
                        usage = obj["usage"]
                    if ttft is None and any(
                        c.get("delta", {}).get("content") for c in obj.get("choices", [])
                    ):
                        ttft = time.monotonic() - sent
                ok = True
            else:
                await resp.aread()
    except httpx.HTTPError:
        pass
    finally:
        sample = Sample(
            tenant,
            sent,
            ttft,
            time.monotonic(),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            ok,
        )
        if sink is not None:
            sink.append(sample)
    return sample


async def warm_up(url: str, key: str, model: str, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(3):
            await one_request(client, url, key, model, max_tokens, "B")


async def run_phase(
    phase: Phase,
    url: str,
    keys: dict[str, str],
    clients: dict[str, int],
    model: str,
    max_tokens: int,
    duration: float,
    spread: float,
) -> None:
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def loop(tenant: str, seed: int) -> None:
            # Lengths vary (uniform within +-spread): same-length requests in closed loops
            # end in lockstep, which no real workload does.
            rng = random.Random(seed)
            low, high = max(1, round(max_tokens * (1 - spread))), round(max_tokens * (1 + spread))
            while not stop.is_set():
                await one_request(
                    client, url, keys[tenant], model, rng.randint(low, high), tenant, phase.samples
                )

        phase.start = time.monotonic()
        # Seeded by scenario and client: both policies get the same request lengths.
        tasks = [
            asyncio.create_task(loop(t, zlib.crc32(f"{phase.name}/{t}/{i}".encode())))
            for t, n in clients.items()
            for i in range(n)
        ]
        await asyncio.sleep(duration)
        phase.end = time.monotonic()
        stop.set()
        # Requests still open did not finish in the phase: disconnect them (the runner
        # stops generating) rather than wait, so the next phase starts on an idle engine.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)


# --- metrics ----------------------------------------------------------------------------


def weighted(s: Sample) -> int:
    return s.prompt_tokens + 2 * s.completion_tokens


def summarize(phase: Phase, warmup: float) -> dict:
    t0, t1 = phase.start + warmup, phase.end
    done = sorted((s for s in phase.samples if s.ok and t0 <= s.done <= t1), key=lambda s: s.done)
    # By when the first token came: under FCFS a request sent in the window may not
    # start before the phase ends, while one sent before it may start inside it.
    light_ttft = sorted(
        s.ttft
        for s in phase.samples
        if s.tenant == "B" and s.ttft is not None and t0 <= s.sent + s.ttft <= t1
    )
    service = {"A": 0.0, "B": 0.0}
    gap = 0.0
    for s in done:  # cumulative weighted service, B starting even at t0
        service[s.tenant] += weighted(s)
        gap = max(gap, service["A"] - service["B"])
    span = t1 - t0
    out = {
        "phase": phase.name,
        "policy": phase.policy,
        "seconds": round(span, 1),
        "requests": {t: sum(s.tenant == t for s in done) for t in ("A", "B")},
        "errors": sum(not s.ok and s.done < phase.end for s in phase.samples),
        "b_ttft_p50": percentile(light_ttft, 50) if light_ttft else None,
        "b_ttft_p95": percentile(light_ttft, 95) if light_ttft else None,
        "throughput_tps": sum(s.completion_tokens for s in done) / span,
        "service_per_s": {t: v / span for t, v in service.items()},
        "jain": jain_index(list(service.values())) if service["A"] and service["B"] else None,
        "max_gap": gap,
        "server": phase.server,
    }
    return out


# --- orchestration ----------------------------------------------------------------------


def start_cp(
    state: Path, db_url: str, port: int, policy: str, window: float
) -> ControlPlaneProcess:
    env = {
        "OUTPOST_SCHEDULER_POLICY": policy,
        "OUTPOST_FAIRNESS_WINDOW_S": str(window),
        "OUTPOST_LOG_LEVEL": "warning",
    }
    return ControlPlaneProcess(state, db_url, extra_env=env, port=port).start()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average {load:.1f} when the run started"
    )


def fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(
    results: list[dict],
    solo: dict,
    args: argparse.Namespace,
    engine_desc: str,
    started_load: str,
    capacity: int,
    headroom: int,
) -> str:
    def mean(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.fmean(vals) if vals else None

    title = "Simulated engine" if args.engine == "sim" else "Real engine: llama.cpp"
    lines = [
        f"### {title}",
        "",
        f"Machine: {started_load}.",
        (
            f"Engine: {engine_desc}. Runner capacity {capacity} (the control plane admits that "
            f"many at once) and fair headroom {headroom} (engine slots VTC grants only to a tenant "
            "with nothing in flight at the lowest counter; plain slots under FCFS, so both "
            f"policies drive the same {capacity + headroom} engine slots)."
        ),
        (
            f"Every request: the same prompt, {args.max_tokens} output tokens on average (uniform "
            f"within ±{args.spread:.0%}, `ignore_eos`), streamed. Clients send back to back. "
            f"{args.duration:g} s per phase, the first {args.warmup:g} s not counted; "
            f"{args.rounds} round(s), policies alternating."
        ),
        (
            f"Scenarios, A always ten times B: **light** — A {args.heavy} clients, B {args.light} "
            "(B asks for less than half the runner: its TTFT should stay near solo); "
            f"**backlogged** — A {10 * capacity} clients, B {capacity} (each alone could fill the "
            "runner: the fair split is 1 : 1)."
        ),
        f"Reproduce: `{args.command}`.",
        "",
        (
            "| scenario | policy | B TTFT p50 s | B TTFT p95 s | Jain's index (A, B) "
            "| largest service gap (weighted tokens) | A : B service | throughput tok/s | vs FCFS |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        (
            f"| solo | B alone, {args.light} client(s) | {fmt(solo['b_ttft_p50'])} | "
            f"{fmt(solo['b_ttft_p95'])} "
            f"| – | – | – | {fmt(solo['throughput_tps'], 1)} | – |"
        ),
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        rows = {
            p: [r for r in results if r["scenario"] == scenario and r["policy"] == p]
            for p in ("fcfs", "vtc")
        }
        base = mean(rows["fcfs"], "throughput_tps")
        for policy in ("fcfs", "vtc"):
            rs = rows[policy]
            if not rs:
                continue
            a = statistics.fmean(r["service_per_s"]["A"] for r in rs)
            b = statistics.fmean(r["service_per_s"]["B"] for r in rs)
            tp = mean(rs, "throughput_tps")
            rel = f"{(tp / base - 1) * 100:+.1f} %" if base and tp else "–"
            lines.append(
                f"| {scenario} | {policy.upper()} | {fmt(mean(rs, 'b_ttft_p50'))} | "
                f"{fmt(mean(rs, 'b_ttft_p95'))} "
                f"| {fmt(mean(rs, 'jain'), 3)} | {mean(rs, 'max_gap') or 0:,.0f} "
                f"| {f'{a / b:.1f} : 1' if b else 'all : 0'} | {fmt(tp, 1)} | {rel} |"
            )
    if args.rounds > 1:
        lines += [
            "",
            f"Means over {args.rounds} phases per policy and scenario; per-phase numbers with "
            "`--json`.",
        ]
    # Drift: the same scenario and policy in different rounds should run at the
    # same speed; the policies themselves may differ (VTC can leave headroom idle).
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r["throughput_tps"]:
            groups.setdefault((r["scenario"], r["policy"]), []).append(r["throughput_tps"])
    drift = max((max(v) / min(v) for v in groups.values() if len(v) > 1), default=1.0)
    if drift > 1.2:
        lines += [
            "",
            (
                "**The machine's speed drifted during the run**: the same scenario and policy ran "
                f"up to {(drift - 1) * 100:.0f} % faster in one round than in another (other jobs "
                "on the same cores). The alternating order cancels a steady drift, not a jump: "
                "read the throughput column as noise here."
            ),
        ]
    return "\n".join(lines) + "\n"


HEADER = """## Tenant fairness on one runner (`bench/bench_fairness.py`)

Tenant A sends ten times tenant B's load to one runner; the same workload runs
under first-come-first-served and under the Virtual Token Counter
(docs/cost.md §4). B's TTFT is measured by its client, from sending to the
first content token (queue included). Jain's index is over the two tenants'
weighted service per second (input x 1 + output x 2); the largest service gap
is the most weighted tokens by which A was ahead of B at any moment of a phase
(both starting even when counting starts). Throughput is output tokens per
second, all tenants. In the **light** scenario B cannot use its fair half
(one client), so Jain's index cannot reach 1 there and A's lead grows under
any policy: what matters is B's TTFT. In the **backlogged** scenario both
could fill the runner, so 1 : 1 service, a Jain's index of 1 and a bounded
gap are the fair outcome.
"""


def _engine_block(engine: str, text: str) -> str:
    return f"<!-- fairness-engine:{engine} -->\n{text}<!-- /fairness-engine:{engine} -->\n"


def write_section(text: str, engine: str, path: Path = README) -> None:
    """Replace this engine's table inside the fairness section, keeping the other engine's."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    blocks: dict[str, str] = {}
    if BEGIN in current and END in current:
        inner = current.split(BEGIN, 1)[1].split(END, 1)[0]
        for name in ("llama", "sim"):
            start, stop = (
                f"<!-- fairness-engine:{name} -->\n",
                f"<!-- /fairness-engine:{name} -->\n",
            )
            if start in inner and stop in inner:
                blocks[name] = inner.split(start, 1)[1].split(stop, 1)[0]
    blocks[engine] = text
    body = "\n".join(
        _engine_block(name, blocks[name]) for name in ("llama", "sim") if name in blocks
    )
    write_marked_section(BEGIN, END, f"{HEADER}\n{body}", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["llama", "sim"], default="llama")
    p.add_argument("--duration", type=float, default=40.0, help="seconds per loaded phase")
    p.add_argument("--solo", type=float, default=15.0, help="seconds of tenant B alone")
    p.add_argument(
        "--warmup", type=float, default=5.0, help="seconds not counted at the start of a phase"
    )
    p.add_argument("--rounds", type=int, default=1, help="FCFS+VTC pairs (alternating order)")
    p.add_argument("--heavy", type=int, default=10, help="tenant A's concurrent clients")
    p.add_argument("--light", type=int, default=1, help="tenant B's concurrent clients")
    p.add_argument("--parallel", type=int, default=2, help="runner slots (its advertised capacity)")
    p.add_argument(
        "--headroom",
        type=int,
        default=1,
        help="fair-headroom engine slots beyond --parallel (the runner's default is 1; 0: plain "
        "VTC)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads (more spin-wait on a busy machine)",
    )
    p.add_argument("--max-tokens", type=int, default=32, help="mean output tokens per request")
    p.add_argument(
        "--spread", type=float, default=0.5, help="output tokens uniform in mean x (1 +- spread)"
    )
    p.add_argument("--sim-prefill-tps", type=float, default=2000.0)
    p.add_argument("--sim-decode-tps", type=float, default=20.0)
    p.add_argument("--order", help="policies in order, e.g. vtc,fcfs (overrides --rounds)")
    p.add_argument(
        "--scenarios", default="light,backlogged", help="which scenarios to run, in order"
    )
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--serve-sim-engine", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_sim_engine:
        serve_sim_engine(
            args.serve_sim_engine, args.parallel, args.sim_prefill_tps, args.sim_decode_tps
        )
        return
    shown = [
        a
        for i, a in enumerate(sys.argv[1:])
        if a != "--no-write" and a != "--json" and (i == 0 or sys.argv[i] != "--json")
    ]  # sys.argv[i] is the argument before a
    args.command = " ".join([".venv/bin/python bench/bench_fairness.py", *shown])
    bench(args)


def bench(args: argparse.Namespace) -> None:
    started = machine()
    tmp = Path(tempfile.mkdtemp(prefix="outpost-fairness-"))
    db_url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    port = free_port()
    cp = start_cp(tmp / "cp", db_url, port, "fcfs", args.duration)
    sim: subprocess.Popen[bytes] | None = None
    runner: RunnerProcess | None = None
    try:
        keys = {"A": cp.api_key("tenant-a"), "B": cp.api_key("tenant-b")}
        # B's admin reads the fairness snapshot; the runner belongs to the default tenant.
        admin = cp.cli("keys", "create", "admin", "--tenant", "tenant-b", "--admin").splitlines()[
            -1
        ]
        operator = cp.api_key("default", "operator")
        runner_args = ["--parallel", str(args.parallel), "--headroom", str(args.headroom)]
        if args.engine == "sim":
            sim_port = free_port()
            # An attached engine's headroom is carved out of its slots: give it that many more.
            slots = args.parallel + args.headroom
            runner_args[1] = str(slots)
            sim = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve-sim-engine",
                    str(sim_port),
                    "--parallel",
                    str(slots),
                    "--sim-prefill-tps",
                    str(args.sim_prefill_tps),
                    "--sim-decode-tps",
                    str(args.sim_decode_tps),
                ]
            )
            wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{sim_port}/v1/models").status_code == 200,
                30,
                "sim",
            )
            runner_args += ["--attach", f"http://127.0.0.1:{sim_port}"]
            model = "sim"
            engine_desc = (
                f"simulated OpenAI server behind a real runner (`--attach`): {slots} slots, "
                f"prefill {args.sim_prefill_tps:g} tok/s, decode {args.sim_decode_tps:g} tok/s per "
                "request, whatever the batch"
            )
        else:
            model = "smollm2-135m-instruct"
            engine_desc = (
                f"llama.cpp (xllamacpp) with the embedded SmolLM2-135M-Instruct Q4_1, "
                f"{args.threads} thread(s)"
            )
        # RunnerProcess passes --threads 1 first; the later flag wins.
        runner = RunnerProcess(
            cp, tmp / "runner", "bench", args=[*runner_args, "--threads", str(args.threads)]
        )
        runner.start()
        runner.wait_connected(operator)
        url = cp.url
        asyncio.run(warm_up(url, keys["B"], model, args.max_tokens))
        print(f"runner ready; {started}", flush=True)

        solo = Phase("solo", None)
        asyncio.run(
            run_phase(
                solo, url, keys, {"B": args.light}, model, args.max_tokens, args.solo, args.spread
            )
        )
        solo_summary = summarize(solo, min(args.warmup, args.solo / 3))
        print(json.dumps(solo_summary), flush=True)

        snap = next(
            iter(
                httpx.get(
                    f"{url}/api/fairness/service",
                    timeout=10,
                    headers={"Authorization": f"Bearer {admin}"},
                )
                .json()["runners"]
                .values()
            )
        )
        capacity, headroom = int(snap["capacity"]), int(snap["headroom"])
        known = {
            "light": {"A": args.heavy, "B": args.light},
            "backlogged": {"A": 10 * capacity, "B": capacity},
        }
        scenarios = {name: known[name] for name in args.scenarios.split(",")}
        order = []
        for r in range(args.rounds):
            order += ["fcfs", "vtc"] if r % 2 == 0 else ["vtc", "fcfs"]
        if args.order:
            order = args.order.split(",")
        results = []
        current = "fcfs"
        for policy in order:
            if policy != current:
                cp.stop()
                cp = start_cp(tmp / "cp", db_url, port, policy, args.duration)
                runner.wait_connected(operator)
                current = policy
            for scenario, clients in scenarios.items():
                phase = Phase(scenario, policy)
                asyncio.run(
                    run_phase(
                        phase,
                        url,
                        keys,
                        clients,
                        model,
                        args.max_tokens,
                        args.duration,
                        args.spread,
                    )
                )
                phase.server = httpx.get(
                    f"{url}/api/fairness/service",
                    timeout=10,
                    headers={"Authorization": f"Bearer {admin}"},
                ).json()
                results.append({"scenario": scenario, **summarize(phase, args.warmup)})
                print(
                    json.dumps({k: v for k, v in results[-1].items() if k != "server"}), flush=True
                )
        text = table(results, solo_summary, args, engine_desc, started, capacity, headroom)
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"solo": solo_summary, "phases": results}, indent=2))
        if not args.no_write:
            write_section(text, args.engine)
            print(f"written to {README.relative_to(ROOT)}")
    finally:
        if runner is not None:
            runner.stop()
        cp.stop()
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
