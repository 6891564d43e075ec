"""Outpost's overhead: the same workload direct to an engine and through Outpost, alternating.

``direct``  = client → engine (its own port);
``through`` = client → control plane → tunnel → runner (``--attach``) → the same engine.

Both paths hit one engine process, with one client (bench/load.py: a cheap
raw-asyncio SSE client, so the load generator steals as little CPU as
possible from the system under test). Each scenario runs ``--rounds``
rounds; a round is one phase per path, their order swapped every round so
slow drift of a shared machine falls on both paths equally. A phase keeps
``c`` closed-loop streams busy for ``--phase-s`` seconds; counted are
requests sent and tokens that arrived inside the window.

Scenarios:

* the real engine (llama.cpp + SmolLM2-135M) at 1, 4 and 16 concurrent streams;
* the SIMULATED engine (bench/sim_engine.py) at 64 streams × 50 tokens/s
  (the TTFT target of issue 11), twice: a *burst* — every stream starts
  within 20 ms of the phase start, the honest worst case — and *steady* —
  the streams ramped in over one request's duration and measured after the
  ramp, the steady load under which LiteLLM's published overhead is
  measured; and unpaced at 1 and 8 streams, which
  exposes the gateway's own ceiling: chunks per second, and chunks per
  CPU-second of the control plane and of the runner; and 16 streams of
  4-token requests, whose CPU per request is the per-request cost (auth,
  routing, scheduling, the request record and its audit event).

    .venv/bin/python bench/bench_overhead.py [--quick|--full] [--only llama|sim] [--no-write]
    .venv/bin/python bench/bench_overhead.py --engine-hop   # the runner's engine client alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
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
from harness.stack import Engine, Stack, pids, start_engine, start_stack

BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


@dataclass(frozen=True)
class Scenario:
    engine: str  # "llama" | "sim"
    streams: int
    max_tokens: int
    tokens_per_s: float | None = None  # sim only; 0 = unpaced
    # Paced sim only: start the streams spread evenly over one request's duration and measure
    # after that ramp (steady load), instead of all at once at the phase start (a burst).
    ramped: bool = False

    @property
    def ramp_s(self) -> float:
        return self.max_tokens / self.tokens_per_s if self.ramped and self.tokens_per_s else 0.0

    @property
    def name(self) -> str:
        if self.engine == "llama":
            return f"SmolLM2 (llama.cpp), {self.streams} stream{'s' if self.streams > 1 else ''}"
        rate = "unpaced" if not self.tokens_per_s else f"{self.tokens_per_s:g} tok/s each"
        short = f"{self.max_tokens} tokens, " if self.max_tokens <= 8 else ""
        start = ""
        if self.tokens_per_s:
            start = (
                f", steady (ramped in over {self.ramp_s:.2g} s)"
                if self.ramped
                else ", burst (all start at once)"
            )
        return f"simulator, {self.streams} streams, {short}{rate}{start}"

    def body(self, model: str) -> bytes:
        extra: dict[str, object] = {"ignore_eos": True}
        if self.engine == "sim":
            extra = {"sim_tokens_per_s": self.tokens_per_s or 0}
        return chat_body(model, self.max_tokens, **extra)


@dataclass
class PathResult:
    samples: list[Sample] = field(default_factory=list)
    tokens_in_window: int = 0
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)

    def add(
        self, samples: list[Sample], tokens: int, window: float, watch: ProcWatch | None
    ) -> None:
        self.samples += samples
        self.tokens_in_window += tokens
        self.window_s += window
        if watch is not None:
            for k, v in watch.cpu_s.items():
                self.cpu_s[k] = self.cpu_s.get(k, 0.0) + v
            for k, v in watch.rss_mb.items():
                self.rss_mb[k] = max(self.rss_mb.get(k, 0.0), v)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error is not None)

    def ttft(self, q: float) -> float:
        return pct([s.ttft for s in self.ok if s.ttft is not None], q)

    def itl(self, q: float) -> float:
        return pct([g for s in self.ok for g in s.gaps], q)

    @property
    def tok_s(self) -> float:
        return self.tokens_in_window / self.window_s if self.window_s else math.nan

    def per_cpu_s(self, proc: str) -> float:
        cpu = self.cpu_s.get(proc, math.nan)
        return self.tokens_in_window / cpu if cpu and not math.isnan(cpu) else math.nan

    def cores(self, proc: str) -> float:
        return self.cpu_s.get(proc, math.nan) / self.window_s if self.window_s else math.nan


def _token_times(s: Sample) -> list[float]:
    if s.ttft is None:
        return []
    t = s.sent + s.ttft
    out = [t]
    for g in s.gaps:
        t += g
        out.append(t)
    return out


async def phase(
    port: int,
    headers: dict[str, str],
    body: bytes,
    streams: int,
    seconds: float,
    watch: ProcWatch | None,
    ramp_s: float = 0.0,
) -> tuple[list[Sample], int, float]:
    """``streams`` closed-loop clients for ``seconds``; requests still running at the end are cut.

    Without ``ramp_s`` every client starts within 20 ms of the phase start (a burst) and
    the window opens at once. With it, client ``i`` starts at ``i / streams × ramp_s`` and
    the window (requests sent, tokens, CPU) opens only after the ramp: steady load.

    Returns the requests sent inside the window (a cut request keeps the
    TTFT and gaps it saw), the content tokens that arrived inside it, and its length.
    """
    samples: list[Sample] = []
    conns = [Conn("127.0.0.1", port) for _ in range(streams)]
    t0 = time.perf_counter() + ramp_s
    deadline = t0 + seconds

    async def worker(i: int, conn: Conn) -> None:
        if ramp_s:
            await asyncio.sleep(i * ramp_s / streams)
        else:
            await asyncio.sleep(random.uniform(0, 0.02))  # no artificial thundering herd
        while time.perf_counter() < deadline:
            await stream_request(conn, "/v1/chat/completions", body, headers, record=samples)

    tasks = [asyncio.create_task(worker(i, c)) for i, c in enumerate(conns)]
    await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
    if watch is not None:
        watch.start()
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    if watch is not None:
        watch.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.close()
    tokens = sum(1 for s in samples for t in _token_times(s) if t0 <= t <= deadline)
    for s in samples:
        if not s.done and s.error is None:
            s.status = s.status or 200
            s.error = (
                None if s.tokens else "cut"
            )  # no token before the end: not an error, not a sample
    return [s for s in samples if s.error != "cut" and s.sent >= t0], tokens, seconds


def _profile(sc: Scenario, watched: dict[str, int], seconds: float, out: Path) -> list:
    """py-spy on the control plane and the runner for one phase: collapsed stacks per process."""
    out.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "-" for c in sc.name)[:60]
    procs = []
    for name in ("control plane", "runner"):
        dest = out / f"{tag}.{name.replace(' ', '-')}.txt"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(watched[name])]
        argv += ["--duration", str(max(1, int(seconds))), "--format", "raw", "--rate", "200"]
        procs.append(subprocess.Popen([*argv, "-o", str(dest)], stdout=subprocess.DEVNULL))
    return procs


async def run_scenario(
    sc: Scenario,
    stack: Stack,
    engine: Engine,
    rounds: int,
    seconds: float,
    settle: float,
    profile: Path | None = None,
) -> dict[str, PathResult]:
    results = {"direct": PathResult(), "through": PathResult()}
    targets = {
        "direct": (engine.port, {}),
        "through": (stack.port, {"Authorization": f"Bearer {stack.key}"}),
    }
    body = sc.body(stack.model)
    watched = pids(stack, engine)
    # Warm up both paths (connections, engine prompt cache, control-plane caches).
    for path in ("direct", "through"):
        port, headers = targets[path]
        await phase(port, headers, body, sc.streams, min(2.0, seconds), None, sc.ramp_s)
        await asyncio.sleep(settle)
    for r in range(rounds):
        order = ("direct", "through") if r % 2 == 0 else ("through", "direct")
        for path in order:
            port, headers = targets[path]
            watch = ProcWatch(watched)
            spies = (
                _profile(sc, watched, seconds + sc.ramp_s, profile)
                if profile is not None and r == 0 and path == "through"
                else []
            )
            samples, tokens, window = await phase(
                port, headers, body, sc.streams, seconds, watch, sc.ramp_s
            )
            results[path].add(samples, tokens, window, watch)
            for spy in spies:
                spy.wait()
            await asyncio.sleep(settle)  # cut requests end; the engine frees their slots
    return results


def _signed(ms: float) -> str:
    """A difference in ms; ``n/a`` when a path had no request that ended inside its windows."""
    return "n/a" if math.isnan(ms) else f"{ms:+.1f}"


def _tails(r: PathResult) -> list[float]:
    """Last content token read -> end of the response read, per request."""
    return [s.done - _token_times(s)[-1] for s in r.ok if s.done and s.ttft is not None]


def summarize(sc: Scenario, res: dict[str, PathResult]) -> dict:
    d, t = res["direct"], res["through"]
    out = {
        "scenario": sc.name,
        "engine": sc.engine,
        "streams": sc.streams,
        "max_tokens": sc.max_tokens,
        "tokens_per_s_each": sc.tokens_per_s,
    }
    for name, r in res.items():
        kinds = Counter(s.error[:120] for s in r.samples if s.error is not None)
        out[name] = {
            "requests": len(r.ok),
            "errors": r.errors,
            "error_kinds": dict(kinds.most_common(5)),
            "ttft_p50_ms": r.ttft(50) * 1e3,
            "ttft_p99_ms": r.ttft(99) * 1e3,
            "itl_p50_ms": r.itl(50) * 1e3,
            "itl_p99_ms": r.itl(99) * 1e3,
            "tok_s": r.tok_s,
            "cpu_s": r.cpu_s,
            "rss_mb": r.rss_mb,
            "window_s": r.window_s,
            # Last content token -> end of the response: time a closed-loop client waits
            # before its next request that no token-latency column shows.
            "tail_p50_ms": pct(_tails(r), 50) * 1e3,
            "tail_p99_ms": pct(_tails(r), 99) * 1e3,
            "request_p50_ms": pct([s.done - s.sent for s in r.ok if s.done], 50) * 1e3,
        }
    out["ratio"] = t.tok_s / d.tok_s if d.tok_s else math.nan
    out["added_ttft_p50_ms"] = (t.ttft(50) - d.ttft(50)) * 1e3
    out["added_ttft_p99_ms"] = (t.ttft(99) - d.ttft(99)) * 1e3
    # The end of a response through Outpost waits for its request record to commit (docs/audit.md).
    out["added_tail_p50_ms"] = out["through"]["tail_p50_ms"] - out["direct"]["tail_p50_ms"]
    out["added_tail_p99_ms"] = out["through"]["tail_p99_ms"] - out["direct"]["tail_p99_ms"]
    out["cp_chunks_per_cpu_s"] = t.per_cpu_s("control plane")
    out["runner_chunks_per_cpu_s"] = t.per_cpu_s("runner")
    out["cp_cores"] = t.cores("control plane")
    out["cp_ms_per_request"] = (
        t.cpu_s.get("control plane", math.nan) / len(t.samples) * 1e3 if t.samples else math.nan
    )
    out["runner_ms_per_request"] = (
        t.cpu_s.get("runner", math.nan) / len(t.samples) * 1e3 if t.samples else math.nan
    )
    out["runner_cores"] = t.cores("runner")
    out["engine_cores_direct"] = d.cores("engine")
    out["engine_cores_through"] = t.cores("engine")
    return out


def table(rows: list[dict], args: argparse.Namespace, started: str, engines: dict[str, str]) -> str:
    lines = [
        "## Overhead: direct to the engine vs through Outpost (`bench/bench_overhead.py`)",
        "",
        f"Machine: {started}; {load_at_end()}.",
        f"Taken: {time.strftime('%Y-%m-%d %H:%M %Z')}. {args.note}".rstrip(),
        "Stack: `control-plane serve` (SQLite, uvicorn) + one `runner local-runner --attach "
        "<engine> --parallel N --connections 2`, every process on this machine. "
        + " ".join(f"{k}: {v}." for k, v in engines.items()),
        (
            f"Method: {args.rounds} rounds × {args.llama_phase_s:g} s (real engine) / "
            f"{args.phase_s:g} s (simulator) per path, alternating direct/through; closed-loop "
            "streams; TTFT = request written → first content token read; ITL = gap between "
            "consecutive content tokens (tokens read together count as 0); tok/s = content tokens "
            "that arrived inside the windows. Simulator at 64 streams, two starts: *burst* = "
            "every stream starts within 20 ms of the phase start, so each phase begins with 64 "
            "requests queued at once (the worst case); *steady* = stream i starts at i/64 of one "
            "request's duration (64 tokens at 50 tok/s: 1.28 s), each then sends back to back, "
            "and only requests sent, tokens and CPU after that ramp count (steady load, as "
            "LiteLLM's published overhead is measured)."
        ),
        f"Reproduce: `{args.command}`.",
        "",
        (
            "| scenario | path | requests | errors | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL "
            "p99 ms | tok/s | through/direct |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for path in ("direct", "through"):
            r = row[path]
            ratio = f"**{row['ratio']:.3f}**" if path == "through" else ""
            lines.append(
                f"| {row['scenario'] if path == 'direct' else ''} | {path} | {r['requests']} | "
                f"{r['errors']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
                f"{r['itl_p50_ms']:.2f} | {r['itl_p99_ms']:.2f} | {r['tok_s']:,.0f} | {ratio} |"
            )
    # An error count without its cause sends readers guessing: name the commonest.
    for row in rows:
        for path in ("direct", "through"):
            for kind, n in row[path].get("error_kinds", {}).items():
                quoted = kind.replace("`", "'")
                lines.append(f"\n{row['scenario']}, {path}: {n} × `{quoted}`")
    lines += [
        "",
        (
            "Added latency and the gateway's cost (through minus direct; CPU of the whole window, "
            "all cores; end of response = last content token read → response end read, which "
            "through Outpost includes the commit of the request record and its audit event):"
        ),
        "",
        (
            "| scenario | added TTFT p50 ms | added TTFT p99 ms | added end of response p50 ms | "
            "p99 ms | control plane cores | runner cores | CPU ms per request: control plane | "
            "runner | chunks per CPU-second: control plane | runner |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['added_ttft_p50_ms']:+.1f} | "
            f"{row['added_ttft_p99_ms']:+.1f} "
            f"| {_signed(row['added_tail_p50_ms'])} | {_signed(row['added_tail_p99_ms'])} "
            f"| {row['cp_cores']:.2f} | {row['runner_cores']:.2f} "
            f"| {row['cp_ms_per_request']:.1f} | {row['runner_ms_per_request']:.1f} "
            f"| {row['cp_chunks_per_cpu_s']:,.0f} | {row['runner_chunks_per_cpu_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out = []
    if args.only in (None, "llama"):
        out += [Scenario("llama", c, args.max_tokens) for c in (1, 4, 16)]
    if args.only in (None, "sim"):
        # 64 paced streams: the TTFT target. Unpaced: the gateway's ceiling (8 streams
        # saturate it; more only lengthen the queues in front of it).
        # Short requests (4 tokens): what the control plane spends per request (auth, routing,
        # scheduling, the record and its audit event) rather than per token.
        # The 64 paced streams twice: a burst at the phase start (the worst case) and ramped in
        # (steady load, how LiteLLM's published figure is measured).
        out += [
            Scenario("sim", 64, 64, 50.0),
            Scenario("sim", 64, 64, 50.0, ramped=True),
            # 12,800 tokens/s offered: what one H100 serving an 8B model streams (issue 24).
            Scenario("sim", 256, 64, 50.0, ramped=True),
            Scenario("sim", 1, 512, 0),
            Scenario("sim", 8, 512, 0),
            Scenario("sim", 16, 4, 0),
        ]
    if args.scenario:
        out = [sc for sc in out if args.scenario in sc.name]
    return out


async def main_async(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    started = machine()
    engines: dict[str, str] = {}
    log_dir = Path(args.tmp)
    by_engine: dict[str, list[Scenario]] = {}
    for sc in scenarios(args):
        by_engine.setdefault(sc.engine, []).append(sc)
    for kind, group in by_engine.items():
        engine = start_engine(
            kind, parallel=16 if kind == "llama" else 256, threads=args.threads, log_dir=log_dir
        )
        engines[kind] = engine.describe
        stack: Stack | None = None
        try:
            stack = start_stack(
                engine, capacity=max(sc.streams for sc in group), tmp=log_dir / kind
            )
            for sc in group:
                print(f"running {sc.name} …", file=sys.stderr, flush=True)
                # The real engine streams ~30-100 tok/s and stalls for seconds on a busy 2-core box:
                # its windows are longer, so every phase sees whole requests.
                seconds = args.phase_s if sc.engine == "sim" else args.llama_phase_s
                res = await run_scenario(
                    sc, stack, engine, args.rounds, seconds, args.settle_s, args.profile
                )
                row = summarize(sc, res)
                rows.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k not in ("direct", "through")}),
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            if stack is not None:
                stack.stop()
            engine.stop()
    args.started, args.engines = started, engines
    return rows


def _hop_event(line: str) -> None:
    if line.startswith("data:") and line[5:].strip() != "[DONE]":
        json.loads(line[5:])


async def _hop_events(chunks: AsyncIterator[bytes]) -> None:
    """Each complete SSE line of a raw body, parsed as the relay parses it."""
    tail = b""
    async for data in chunks:
        data = tail + data
        cut = data.rfind(b"\n")
        tail = data[cut + 1 :]
        for line in data[:cut].decode().splitlines():
            _hop_event(line)


class _LeanParser:
    """httptools callbacks: each complete SSE line parsed as the relay parses it."""

    def __init__(self) -> None:
        import httptools  # only --engine-hop needs it

        self.done, self.tail, self.p = False, b"", httptools.HttpResponseParser(self)

    def on_body(self, data: bytes) -> None:
        data = self.tail + data
        cut = data.rfind(b"\n")
        self.tail = data[cut + 1 :]
        for line in data[:cut].decode().splitlines():
            _hop_event(line)

    def on_message_complete(self) -> None:
        self.done = True


async def _hop_drive(
    one: Callable[[int], Awaitable[None]], streams: int, tokens: int, rate: float, seconds: float
) -> tuple[int, float]:
    """Paced streams through ``one`` for ``seconds``: requests sent, CPU seconds spent."""
    ramp = tokens / rate
    t0 = time.perf_counter() + ramp
    end = t0 + seconds
    sent = 0

    async def worker(i: int) -> None:
        nonlocal sent
        await asyncio.sleep(i * ramp / streams)
        while time.perf_counter() < end:
            sent += time.perf_counter() >= t0
            await one(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(streams)]
    await asyncio.sleep(t0 - time.perf_counter())
    cpu0 = time.process_time()
    await asyncio.sleep(end - time.perf_counter())
    cpu = time.process_time() - cpu0
    await asyncio.gather(*tasks)
    return sent, cpu


async def engine_hop(seconds: float, rounds: int) -> str:
    """The runner's engine hop alone, in this process: its client vs others, same load.

    64 paced streams (64 tokens at 50 tok/s, ramped in as in the steady scenario) to the
    simulated engine, each event's JSON parsed as the relay does; CPU seconds of this process
    in the window ÷ requests sent in it. ``runner`` is the runner's client
    (``runner.engine_client.AiohttpEngineClient`` + ``runner.sse.line_batches``, as the relay
    uses them); ``httpx`` is the client it replaced (``agent.py``'s limits, batches grouped by
    ``runner.sse.read_ahead``); ``aiohttp`` is a plain ``ClientSession`` reading ``iter_any``;
    ``lean`` is one keep-alive connection per stream on asyncio streams + ``httptools`` (what
    ``bench/load.py`` does).
    """
    from contextlib import aclosing

    import aiohttp
    import httpx

    from outpost.runner.engine_client import AiohttpEngineClient
    from outpost.runner.relay import EngineEndpoint, engine_request
    from outpost.runner.sse import line_batches, read_ahead

    streams, tokens, rate = 64, 64, 50.0
    started = machine()
    tmp = Path(__import__("tempfile").mkdtemp(prefix="outpost-hop-"))
    engine = start_engine("sim", parallel=256, log_dir=tmp)
    payload = json.loads(chat_body("sim", tokens, sim_tokens_per_s=rate))
    payload["stream_options"] = {"include_usage": True}  # as the relay asks
    body = json.dumps(payload).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{engine.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))

    async def via_httpx(_: int) -> None:
        async with (
            http.stream(
                "POST", engine.url + "/v1/chat/completions", json=payload, timeout=None
            ) as resp,
            aclosing(line_batches(read_ahead(resp.aiter_bytes()))) as batches,
        ):
            async for lines in batches:
                for line in lines:
                    _hop_event(line)

    client = AiohttpEngineClient(limit=512)
    endpoint = EngineEndpoint(engine.url, {}, {})

    async def via_runner(_: int) -> None:
        headers, data = engine_request(endpoint, payload)
        async with (
            client.request(
                "POST", engine.url + "/v1/chat/completions", headers=headers, body=data
            ) as resp,
            aclosing(line_batches(resp.batches())) as batches,
        ):
            async for lines in batches:
                for line in lines:
                    _hop_event(line)

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )

    async def via_aiohttp(_: int) -> None:
        async with session.post(
            engine.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp:
            await _hop_events(resp.content.iter_any())

    conns = [Conn("127.0.0.1", engine.port) for _ in range(streams)]

    async def via_lean(i: int) -> None:
        c = conns[i]
        if c.writer is None:
            await c.open()
        assert c.writer is not None and c.reader is not None
        c.writer.write(head + body)
        parser = _LeanParser()
        while not parser.done:
            data = await c.reader.read(1 << 16)
            if not data:
                raise ConnectionError("engine closed the connection")
            parser.p.feed_data(data)

    lines = [
        "| round | client | requests | CPU s | CPU ms per request |",
        "|---:|---|---:|---:|---:|",
    ]
    try:
        for r in range(rounds):
            for name, one in (
                ("httpx (the runner's before)", via_httpx),
                ("runner (`AiohttpEngineClient` + `line_batches`)", via_runner),
                ("aiohttp (plain `iter_any`)", via_aiohttp),
                ("lean (asyncio + httptools)", via_lean),
            ):
                n, cpu = await _hop_drive(one, streams, tokens, rate, seconds)
                lines.append(f"| {r + 1} | {name} | {n} | {cpu:.2f} | {cpu / n * 1e3:.2f} |")
    finally:
        await http.aclose()
        await session.close()
        await client.aclose()
        for c in conns:
            c.close()
        engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return (
        f"Engine hop alone (`--engine-hop`), {started}; {load_at_end()}; {seconds:g} s windows.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds x 6 s (real engine) / 3 s (simulator) per path (default)",
    )
    mode.add_argument("--full", action="store_true", help="6 rounds x 15 s / 8 s per path")
    p.add_argument("--only", choices=["llama", "sim"])
    p.add_argument("--scenario", help="only scenarios whose name contains this, e.g. '4 tokens'")
    p.add_argument("--rounds", type=int)
    p.add_argument("--phase-s", type=float)
    p.add_argument("--llama-phase-s", type=float, help="phase length with the real engine")
    p.add_argument("--settle-s", type=float, default=0.5)
    p.add_argument(
        "--max-tokens", type=int, default=32, help="real engine, per request (ignore_eos)"
    )
    # One core for the engine, one for the client, control plane and runner: on 2 cores, two
    # llama.cpp threads fight the gateway for CPU and stall at every barrier when descheduled.
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    p.add_argument("--note", default="", help="load on the machine etc., printed with the table")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the control plane and the runner in each scenario's first through phase; "
        "collapsed stacks (py-spy --format raw) go to this folder",
    )
    p.add_argument(
        "--engine-hop",
        action="store_true",
        help="only the runner's engine hop: its client (aiohttp) vs "
        "httpx, plain aiohttp and a lean asyncio + httptools one, CPU per request at 64 steady "
        "streams (printed, not written)",
    )
    args = p.parse_args(argv)
    if args.engine_hop:
        text = run_async(engine_hop(args.phase_s or 8.0, args.rounds or 2))
        print(text)
        return {"text": text}
    args.rounds = args.rounds or (6 if args.full else 3)
    args.phase_s = args.phase_s or (8.0 if args.full else 3.0)
    args.llama_phase_s = args.llama_phase_s or (15.0 if args.full else 6.0)
    args.command = shlex.join(
        [
            ".venv/bin/python",
            "bench/bench_overhead.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    args.tmp = tmp = Path(__import__("tempfile").mkdtemp(prefix="outpost-overhead-"))
    try:
        rows = run_async(main_async(args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows, args, args.started, args.engines)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.no_write:
        write_section(BEGIN, END, text)
    return {"rows": rows, "text": text}


if __name__ == "__main__":
    main()
