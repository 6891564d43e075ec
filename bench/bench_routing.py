"""Benchmark routing on a multi-turn chat workload: prefix affinity vs round robin.

One run measures three routing set-ups on the same workload, each on a fresh
control plane (a real ``control-plane serve`` process, SQLite) with four fresh
SIMULATED runners (bench/sim_runner.py: the real tunnel client in front of a
timing model of an engine with a prefix cache; four real llama.cpp engines
would oversubscribe this 2-core machine and measure CPU contention instead):

* ``round robin`` — ``OUTPOST_ROUTING_STRATEGY=round_robin``: the baseline;
* ``latency, no affinity`` — the latency policy alone (load-aware);
* ``latency + prefix affinity`` — the default router with the latency policy.

Workload: ``--users`` concurrent users; each runs ``--conversations``
conversations of ``--turns`` turns one after the other, resending the whole
history every turn (a shared system prompt, a document of its own, short
follow-up questions, fixed-length answers), with a random think time.
TTFT is measured by the client (request sent → first content chunk).

    .venv/bin/python bench/bench_routing.py [--users 16] [--turns 5] [--no-write]

The table is printed and written between the routing markers in
bench/README.md (only that section is touched).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _repo import ROOT

from bench.load import cpu_model, write_section
from bench.sim_runner import SimParams, SimulatedRunner
from harness.processes import ControlPlaneProcess
from harness.stack import start_control_plane

README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- routing:begin -->", "<!-- routing:end -->"
MODEL = "sim-chat"


@dataclass(frozen=True)
class Arm:
    name: str
    env: dict[str, str]
    header: str | None


ARMS = (
    Arm("round robin", {"OUTPOST_ROUTING_STRATEGY": "round_robin"}, None),
    Arm("latency, no affinity", {"OUTPOST_ROUTING_AFFINITY": "false"}, "latency"),
    Arm("latency + prefix affinity", {}, "latency"),
)


@dataclass(frozen=True)
class Workload:
    users: int = 16
    conversations: int = 3  # per user, one after the other
    turns: int = 5
    system_words: int = 300
    document_words: int = 500
    question_words: int = 30
    answer_tokens: int = 32
    think_s: float = 0.5  # uniform in [0, think_s]
    ramp_s: float = 5.0  # users start uniformly in [0, ramp_s]
    seed: int = 7

    def describe(self) -> str:
        return (
            f"{self.users} concurrent users x {self.conversations} conversations x {self.turns} "
            f"turns ({self.users * self.conversations * self.turns} requests); shared system "
            f"prompt {self.system_words} tokens, a {self.document_words}-token document per "
            f"conversation, {self.question_words}-token follow-ups, {self.answer_tokens}-token "
            f"answers, think time U(0, {self.think_s:g}) s, users starting over {self.ramp_s:g} s"
        )


@dataclass
class Result:
    arm: str
    ttft_s: list[float] = field(default_factory=list)
    ttft_followup_s: list[float] = field(default_factory=list)  # turns 2+: what affinity can help
    output_tokens: int = 0
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0


async def conversation(
    http: httpx.AsyncClient,
    key: str,
    arm: Arm,
    w: Workload,
    conv_id: int,
    rng: random.Random,
    result: Result,
) -> None:
    system = " ".join(f"sys{i}" for i in range(w.system_words))
    document = " ".join(f"doc{conv_id}_{i}" for i in range(w.document_words))
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Read this document. {document}"},
    ]
    headers = {"Authorization": f"Bearer {key}"}
    if arm.header:
        headers["X-Outpost-Routing"] = arm.header
    for turn in range(w.turns):
        body = {"model": MODEL, "messages": messages, "max_tokens": w.answer_tokens, "stream": True}
        t0 = time.perf_counter()
        ttft, answer = None, []
        try:
            async with http.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise RuntimeError(f"{resp.status_code}: {resp.text[:200]}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices") or []:
                        if text := (choice.get("delta") or {}).get("content"):
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            answer.append(text)
        except (httpx.HTTPError, RuntimeError) as exc:
            result.errors += 1
            print(f"  {arm.name}: conversation {conv_id} turn {turn}: {exc}", file=sys.stderr)
            return
        result.requests += 1
        result.output_tokens += len(answer)
        if ttft is not None:
            result.ttft_s.append(ttft)
            if turn:
                result.ttft_followup_s.append(ttft)
        messages += [
            {"role": "assistant", "content": "".join(answer).strip()},
            {
                "role": "user",
                "content": " ".join(f"q{conv_id}_{turn}_{i}" for i in range(w.question_words)),
            },
        ]
        await asyncio.sleep(rng.uniform(0, w.think_s))


async def user(
    http: httpx.AsyncClient, key: str, arm: Arm, w: Workload, u: int, result: Result
) -> None:
    rng = random.Random(w.seed * 1000 + u)  # the same think times in every arm
    await asyncio.sleep(rng.uniform(0, w.ramp_s))  # users arrive over the ramp, not all at once
    for c in range(w.conversations):
        await conversation(http, key, arm, w, u + c * w.users, rng, result)


async def run_arm(
    cp: ControlPlaneProcess, key: str, tokens: list[str], arm: Arm, w: Workload, params: SimParams
) -> Result:
    result = Result(arm.name)
    limits = httpx.Limits(max_connections=w.users + 8, max_keepalive_connections=w.users + 8)
    async with httpx.AsyncClient(base_url=cp.url, timeout=300, limits=limits) as http:
        runners = [SimulatedRunner(cp.url, t, params) for t in tokens]
        for r in runners:
            await r.start(http)
        await _waitconnected(http, key, len(runners))
        t0 = time.perf_counter()
        await asyncio.gather(*(user(http, key, arm, w, u, result) for u in range(w.users)))
        result.wall_s = time.perf_counter() - t0
        for r in runners:
            result.prompt_tokens += r.engine.prompt_tokens
            result.cached_tokens += r.engine.prompt_tokens_cached
            await r.stop()
    return result


async def _waitconnected(http: httpx.AsyncClient, key: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = (await http.get("/api/runners", headers={"Authorization": f"Bearer {key}"})).json()[
            "data"
        ]
        if sum(1 for r in rows if r["connected"]) >= n:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("simulated runners did not connect")


def bench(arm: Arm, w: Workload, params: SimParams, n_runners: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        state = Path(tmp)
        cp = start_control_plane(state, arm.env)
        try:
            key = cp.api_key()
            tokens = [cp.enrollment_token(f"sim-{i}") for i in range(n_runners)]
            return asyncio.run(run_arm(cp, key, tokens, arm, w, params))
        finally:
            cp.stop()


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def machine() -> str:
    model = cpu_model()
    return (
        f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def table(
    results: list[Result],
    w: Workload,
    params: SimParams,
    n_runners: int,
    load: tuple[float, float] | None = None,
) -> str:
    lines = [
        "## Routing: prefix affinity vs round robin (`bench/bench_routing.py`)",
        "",
        f"Machine: {machine()}. Control plane: `control-plane serve` (SQLite) on the same machine.",
        (
            f"Runners: {n_runners} **simulated** runners (`bench/sim_runner.py`: the real tunnel "
            "client in front of "
            "a timing model of an engine; four llama.cpp engines would oversubscribe these 2 "
            "cores and measure "
            f"CPU contention instead): {params.describe()}."
        ),
        f"Workload: {w.describe()}. TTFT measured by the client, streaming.",
        *(
            [
                (
                    f"Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} — the "
                    "three set-ups run one "
                    "after the other, so load from other processes affects them unequally."
                )
            ]
            if load
            else []
        ),
        "Reproduce: `.venv/bin/python bench/bench_routing.py`.",
        "",
        (
            "| routing | requests | errors | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | follow-up "
            "turns: TTFT p50 ms "
            "| follow-up p99 ms | output tok/s | requests/s | prefix-cache hit |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        hit = r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0
        ms = [
            _pct(v, q) * 1000
            for v, q in (
                (r.ttft_s, 50),
                (r.ttft_s, 90),
                (r.ttft_s, 99),
                (r.ttft_followup_s, 50),
                (r.ttft_followup_s, 99),
            )
        ]
        lines.append(
            f"| {r.arm} | {r.requests} | {r.errors} | "
            + " | ".join(f"{m:.0f}" for m in ms)
            + f" | {r.output_tokens / r.wall_s:.1f} | {r.requests / r.wall_s:.2f} | {hit:.0%} |"
        )
    lines += [
        "",
        (
            "Follow-up turns: every turn but a conversation's first, whose history a runner may "
            "hold. Prefix-cache hit: share of prompt tokens the simulated engines found in their "
            "cache (no prefill). A first turn always prefills its document, so the p99 of all "
            "turns is set by first turns queueing for a prefill under every routing."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=Workload.users)
    parser.add_argument("--conversations", type=int, default=Workload.conversations)
    parser.add_argument("--turns", type=int, default=Workload.turns)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    w = Workload(users=args.users, conversations=args.conversations, turns=args.turns)
    params = SimParams()
    results = []
    load_start = os.getloadavg()[0]
    for arm in ARMS:
        print(f"running: {arm.name} …", file=sys.stderr)
        results.append(bench(arm, w, params, args.runners))
    text = table(results, w, params, args.runners, (load_start, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)
        print(f"written to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
