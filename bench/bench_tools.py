"""Tool calls through Outpost vs straight to the engine, with the real llama.cpp engine (issue 23).

One control plane (SQLite) and one ``runner local-runner`` with the embedded
SmolLM2 model, its engine started by the runner with the ChatML tool template.
*Direct* requests go to that engine's own port with the body the runner would
send it (the call opened for ``tool_choice``, runner/tool_support.py), so both
paths make the engine do the same work; *through* requests go to the control
plane with the client's body. Sequential requests, alternating rounds;
latency = request sent (on a new connection) → whole answer read
(unstreamed) or → ``[DONE]`` (streamed), both with ``tool_choice`` naming the
function (one call each).

    .venv/bin/python bench/bench_tools.py [--rounds 3] [--per-round 8] [--note TEXT]

Writes its table between ``<!-- tools:begin -->`` / ``<!-- tools:end -->`` in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)
import httpx

from bench.load import fmt_ms, load_at_end, machine, pct, write_section
from harness.processes import RunnerProcess
from harness.stack import start_control_plane, start_runner
from outpost.runner.tool_support import prefill_tool_choice

BEGIN, END = "<!-- tools:begin -->", "<!-- tools:end -->"
NOTE = (
    "The through − direct gap includes the tool-call body's validation, routing, the fair queue, "
    "the tunnel and the record's commit before the answer ends (docs/audit.md), all competing "
    "for 2 cores with the engine: read it with the load average above; "
    "`bench/bench_overhead.py` separates these costs."
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def body(stream: bool) -> dict:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
        "temperature": 0,
        "stream": stream,
    }


def one(client: httpx.Client, url: str, payload: dict, headers: dict[str, str]) -> float:
    """Seconds for one whole answer; raises unless it is a tool call."""
    start = time.perf_counter()
    if payload["stream"]:
        text = ""
        with client.stream("POST", url, json=payload, headers=headers) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                text += line
        elapsed = time.perf_counter() - start
        assert '"tool_calls"' in text and "[DONE]" in text, text[:300]
        return elapsed
    resp = client.post(url, json=payload, headers=headers)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    assert resp.json()["choices"][0]["message"].get("tool_calls"), resp.text[:300]
    return elapsed


def engine_port(runner: RunnerProcess) -> int:
    """The runner's engine port, from the engine's command line (the runner picks it)."""
    import psutil

    assert runner.proc is not None
    for child in psutil.Process(runner.proc.pid).children(recursive=True):
        cmd = child.cmdline()
        if "outpost.runner.engines.xllamacpp_main" in cmd:
            return int(cmd[cmd.index("--port") + 1])
    raise RuntimeError("no engine process under the runner")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--note", default="")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = datetime.now(UTC)
    machine_line = machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    cp = start_control_plane(tmp)
    runner: RunnerProcess | None = None
    rows = []
    try:
        key = cp.api_key()
        runner = start_runner(cp, tmp, "bench-tools", key)
        direct_url = f"http://127.0.0.1:{engine_port(runner)}/v1/chat/completions"
        through_url = f"{cp.url}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {key}"}
        # A new connection per request on both paths: an idle keep-alive connection is closed by
        # either server after a few seconds (uvicorn and llama.cpp: 5 s), and the other path's
        # round is longer than that on a loaded machine.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=120, limits=no_reuse) as client:
            for stream in (False, True):
                times: dict[str, list[float]] = {"direct": [], "through": []}
                for path, url, payload, headers in (
                    ("direct", direct_url, prefill_tool_choice(body(stream)), {}),
                    ("through", through_url, body(stream), auth),
                ):
                    one(client, url, payload, headers)  # warm: the prompt cache holds it
                for _ in range(args.rounds):
                    for path, url, payload, headers in (
                        ("direct", direct_url, prefill_tool_choice(body(stream)), {}),
                        ("through", through_url, body(stream), auth),
                    ):
                        times[path] += [
                            one(client, url, payload, headers) for _ in range(args.per_round)
                        ]
                rows.append((stream, times))
    finally:
        if runner is not None:
            runner.stop()
        cp.stop()
    lines = [
        "## Tool calls: direct to the engine vs through Outpost (`bench/bench_tools.py`)",
        "",
        f"Machine: {machine_line}; {load_at_end()}.",
        f"Taken: {started:%Y-%m-%d %H:%M} UTC. {args.note}".rstrip(),
        "Stack: `control-plane serve` (SQLite) + one `runner local-runner` (embedded SmolLM2-135M "
        "Q4_1, llama.cpp through xllamacpp with the runner's ChatML tool template), all on this "
        "machine. Direct: the engine's port, sent the body the runner sends (the call opened for "
        "the named `tool_choice`); through: the control plane, sent the client's body.",
        f"Method: {args.rounds} rounds × {args.per_round} sequential requests per path, "
        "alternating; `tool_choice` names `get_weather` (one call), `max_tokens` 40, temperature "
        "0; latency = request sent on a new connection → whole answer (or `[DONE]`) read.",
        f"Reproduce: `.venv/bin/python bench/bench_tools.py --rounds {args.rounds} "
        f"--per-round {args.per_round}"
        + (f" --note {json.dumps(args.note)}" if args.note else "")
        + "`.",
        "",
        "| scenario | path | requests | p50 ms | p99 ms | through − direct p50 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for stream, times in rows:
        label = "tool call, streamed" if stream else "tool call, whole answer"
        d50, t50 = pct(times["direct"], 50), pct(times["through"], 50)
        lines.append(
            f"| {label} | direct | {len(times['direct'])} | {fmt_ms(d50)} | "
            f"{fmt_ms(pct(times['direct'], 99))} |  |"
        )
        lines.append(
            f"|  | through | {len(times['through'])} | {fmt_ms(t50)} | "
            f"{fmt_ms(pct(times['through'], 99))} | **{fmt_ms(t50 - d50)}** |"
        )
    lines += ["", NOTE]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, re.sub(r"\n{3,}", "\n\n", text))


if __name__ == "__main__":
    main()
