"""One control plane, 100 then 1,000 connected runners, 1,000+ concurrent streams: where does it
break?

Runners are SIMULATED (bench/sim_runner.py: the runner's real tunnel client,
a timing model instead of an engine), all in one child process, each with
one tunnel connection. Every one goes through the real enrollment: an
enrollment token from ``POST /api/runners/enroll`` (admin key), exchanged at
``/api/runners/register`` for its fresh Ed25519 identity, then the signed
tunnel handshake.

Per level the control plane (a real ``control-plane serve``, SQLite) is
measured idle (runners connected, status frames and pings only) and under
``--streams`` closed-loop streams. Each stream asks for ``--tokens`` tokens
that the simulated engine sends at ``--decode-tps`` per stream, the first one
at once, so the client's time to first token is the whole overhead of the
path (API, scheduler, tunnel, runner) and nothing else. Worker starts are
spread over one request's duration and only requests sent after that count.

A level "breaks" when more than 1 % of requests fail, TTFT p99 exceeds
``--break-ttft-s``, or fewer than 90 % of the offered tokens arrive.

After each level the benchmark checks the product rule "nothing accepted is
lost": every request the control plane answered with an ``x-request-id``
(except a 503 ``records_backlog``, which refuses a request before accepting
it) must have its request record and exactly one ``inference`` audit event
in the database, once the record writer has caught up (up to
``--records-wait-s``).

    .venv/bin/python bench/bench_scale.py [--quick|--full] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)
import httpx

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
from harness.processes import ControlPlaneProcess
from harness.stack import start_control_plane

BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
MODEL = "sim-chat"


# --- the swarm of simulated runners (a child process) -------------------------------------------


def swarm(cp_url: str, admin_key: str, slots: int, decode_tps: float) -> None:
    """Reads ``connect N`` lines on stdin; answers ``connected N <seconds>`` once N runners are
    up."""
    from bench.sim_runner import SimParams, SimulatedRunner

    params = SimParams(slots=slots, prefill_tps=1e9, decode_tps=decode_tps, kv_tokens=512)

    async def main() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        runners: list[SimulatedRunner] = []
        async with httpx.AsyncClient(base_url=cp_url, timeout=120, limits=limits) as http:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            gate = asyncio.Semaphore(8)

            async def one(i: int) -> SimulatedRunner:
                async with gate:
                    resp = await http.post(
                        "/api/runners/enroll",
                        json={"name": f"sim-{i}"},
                        headers={"Authorization": f"Bearer {admin_key}"},
                    )
                    resp.raise_for_status()
                    r = SimulatedRunner(cp_url, resp.json()["token"], params, model=MODEL)
                    await r.start(http)
                    return r

            while line := (await reader.readline()).decode().strip():
                cmd, n = line.split()
                assert cmd == "connect"
                t0 = time.perf_counter()
                runners += await asyncio.gather(*(one(i) for i in range(len(runners), int(n))))
                print(f"started {len(runners)} {time.perf_counter() - t0:.2f}", flush=True)
            for r in runners:
                await r.stop()

    run_async(main())


class Swarm:
    def __init__(self, cp_url: str, admin_key: str, slots: int, decode_tps: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--swarm",
                cp_url,
                "--admin-key",
                admin_key,
                "--slots",
                str(slots),
                "--decode-tps",
                str(decode_tps),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"connect {n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "started":
            raise RuntimeError(f"swarm failed (exit {self.proc.poll()})")
        return float(line[2])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def waitconnected(cp: ControlPlaneProcess, key: str, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as http:
        while time.perf_counter() - t0 < timeout:
            rows = (
                await http.get(f"{cp.url}/api/runners", headers={"Authorization": f"Bearer {key}"})
            ).json()["data"]
            if sum(1 for r in rows if r["connected"]) >= n:
                return time.perf_counter() - t0
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{n} runners did not connect in {timeout}s")


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Level:
    runners: int
    streams: int
    connect_s: float = 0.0
    idle: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    verdict: str = ""


async def load_phase(
    cp: ControlPlaneProcess, key: str, streams: int, args: argparse.Namespace, watch: ProcWatch
) -> dict:
    duration = request_s(args)
    body = chat_body(MODEL, args.tokens)
    headers = {"Authorization": f"Bearer {key}"}
    samples: list[Sample] = []
    t0 = time.perf_counter()
    measure_from = t0 + duration  # every stream has started by then
    deadline = measure_from + args.window_s

    async def worker() -> None:
        conn = Conn("127.0.0.1", cp.port)
        await asyncio.sleep(random.uniform(0, duration))
        try:
            while time.perf_counter() < deadline:
                await stream_request(
                    conn,
                    "/v1/chat/completions",
                    body,
                    headers,
                    timeout=duration * 10 + 60,
                    record=samples,
                )
        finally:
            conn.close()

    tasks = [asyncio.create_task(worker()) for _ in range(streams)]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    watch.start()
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    watch.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    counted = [s for s in samples if measure_from <= s.sent <= deadline]
    finished = [s for s in counted if s.done]
    ok = [s for s in finished if s.ok]
    failed = [s for s in samples if s.done and not s.ok]  # any failure seen during the phase
    # Sent in the window, still without a first token when it closed: a failure in the making.
    stalled = [s for s in counted if not s.done and s.ttft is None and s.sent < deadline - 5.0]
    ttfts = [s.ttft for s in counted if s.ttft is not None]
    gaps = [g for s in counted if s.ok for g in s.gaps]
    tokens = 0
    for s in samples:  # tokens that arrived inside the window
        if s.ttft is None:
            continue
        t = s.sent + s.ttft
        for g in [0.0, *s.gaps]:
            t += g
            tokens += measure_from <= t <= deadline
    errors: dict[str, int] = {}
    for s in failed:
        kind = (s.error or "?").split(":")[0][:60]
        errors[kind] = errors.get(kind, 0) + 1
    accepted = sorted(
        {
            s.request_id
            for s in samples
            if s.request_id is not None and not (s.error and "records_backlog" in s.error)
        }
    )
    return {
        "accepted_ids": accepted,
        "sent": len(counted),
        "requests": len(finished),
        "ok": len(ok),
        "failed": len(failed),
        "stalled": len(stalled),
        "errors": errors,
        "ttft_p50_ms": pct(ttfts, 50) * 1e3,
        "ttft_p99_ms": pct(ttfts, 99) * 1e3,
        "itl_p50_ms": pct(gaps, 50) * 1e3,
        "itl_p99_ms": pct(gaps, 99) * 1e3,
        "tok_s": tokens / args.window_s,
        "offered_tok_s": streams * args.tokens / duration,
        "offered_rps": streams / duration,
        "cores": {k: watch.cores(k) for k in watch.procs},
        "rss_mb": dict(watch.rss_mb),
    }


#: Lines of the control plane's log that say why it broke.
_LOG_SIGNS = {
    "sqlalchemy.exc.TimeoutError: QueuePool limit": "database connection pool exhausted (30 s "
    "timeout)",
    "could not write request record": "request record lost",
    "unhandled error": "500 unhandled error",
}


def cp_errors(log: str) -> dict[str, int]:
    return {label: n for sign, label in _LOG_SIGNS.items() if (n := log.count(sign))}


def recorded(db_path: Path, ids: list[str]) -> tuple[set[str], dict[str, int]]:
    """Which of ``ids`` have a request record, and how many ``inference`` audit events each has."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        wanted = set(ids)
        have = {r[0] for r in conn.execute("SELECT id FROM request_records")} & wanted
        events: dict[str, int] = {}
        for (data,) in conn.execute("SELECT data FROM audit_events WHERE type = 'inference'"):
            rid = json.loads(data)["request_id"]
            if rid in wanted:
                events[rid] = events.get(rid, 0) + 1
        return have, events
    finally:
        conn.close()


async def check_records(db_path: Path, ids: list[str], wait_s: float) -> dict:
    """Wait (up to ``wait_s``) for every accepted request's record and audit event; count what
    is missing."""
    t0 = time.perf_counter()
    while True:
        have, events = await asyncio.to_thread(recorded, db_path, ids)
        caught_up = len(have) == len(ids) and all(events.get(i) == 1 for i in ids)
        if caught_up or time.perf_counter() - t0 > wait_s:
            break
        await asyncio.sleep(1.0)
    return {
        "accepted": len(ids),
        "recorded": len(have),
        "lost": len(ids) - len(have),
        "audited_once": sum(1 for i in ids if events.get(i) == 1),
        "audit_duplicates": sum(1 for n in events.values() if n > 1),
        "caught_up_s": time.perf_counter() - t0,
    }


def cpu_ms_per_request(load: dict, args: argparse.Namespace) -> float:
    return load["cores"]["control plane"] * args.window_s / max(load["sent"], 1) * 1000


def request_s(args: argparse.Namespace) -> float:
    """How long one stream's request lasts at the simulated engine: first token at once, then
    paced."""
    return max(args.tokens - 1, 1) / args.decode_tps


def verdict(load: dict, args: argparse.Namespace) -> str:
    reasons = []
    total = max(load["sent"], 1)
    if (load["failed"] + load["stalled"]) / total > 0.01:
        reasons.append(
            f"{load['failed']} failed ({', '.join(load['errors']) or '-'}), {load['stalled']} of "
            f"{load['sent']} sent without a first token after 5 s"
        )
    rec = load.get("records")
    if rec and (rec["lost"] or rec["audit_duplicates"] or rec["audited_once"] < rec["accepted"]):
        reasons.append(
            f"{rec['lost']} of {rec['accepted']} accepted requests have no record after "
            f"{rec['caught_up_s']:.0f} s, {rec['accepted'] - rec['audited_once']} not audited "
            "exactly once"
        )
    if load.get("cp_errors"):
        reasons.append(
            "control plane logged " + ", ".join(f"{n}× {k}" for k, n in load["cp_errors"].items())
        )
    if not math.isnan(load["ttft_p99_ms"]) and load["ttft_p99_ms"] > args.break_ttft_s * 1000:
        reasons.append(f"TTFT p99 {load['ttft_p99_ms'] / 1000:.1f} s > {args.break_ttft_s:g} s")
    if load["tok_s"] < 0.9 * load["offered_tok_s"]:
        reasons.append(f"{load['tok_s']:,.0f} of {load['offered_tok_s']:,.0f} offered tok/s")
    return "breaks: " + "; ".join(reasons) if reasons else "holds"


async def bench(args: argparse.Namespace) -> list[Level]:
    tmp = Path(tempfile.mkdtemp(prefix="outpost-scale-"))
    env = {
        "OUTPOST_SCHEDULER_MAX_QUEUE": "100000",
        "OUTPOST_TUNNEL_MAX_STREAMS_PER_CONNECTION": "1024",
    }
    cp = start_control_plane(tmp, env)
    levels: list[Level] = []
    swarm_: Swarm | None = None
    try:
        admin = cp.cli("keys", "create", "bench-admin", "--admin").splitlines()[-1]
        key = cp.api_key("default", "bench")
        swarm_ = Swarm(cp.url, admin, args.slots, args.decode_tps)
        for n_runners, stream_levels in args.plan:
            print(f"connecting {n_runners} simulated runners …", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            swarm_.start(n_runners)
            await waitconnected(cp, admin, n_runners, timeout=600)
            connect_s = time.perf_counter() - t0
            pids = {
                "control plane": cp.proc.pid,
                "runners (swarm)": swarm_.proc.pid,
                "client": __import__("os").getpid(),
            }
            idle = ProcWatch(pids)
            idle.start()
            await asyncio.sleep(args.idle_s)
            idle.stop()
            idle_row = {"cores": {k: idle.cores(k) for k in pids}, "rss_mb": dict(idle.rss_mb)}
            for streams in stream_levels:
                print(f"  {n_runners} runners, {streams} streams …", file=sys.stderr, flush=True)
                lv = Level(n_runners, streams, connect_s, idle_row)
                log_before = len(cp.log())
                lv.load = await load_phase(cp, key, streams, args, ProcWatch(pids))
                ids = lv.load.pop("accepted_ids")
                lv.load["records"] = await check_records(
                    tmp / "cp" / "outpost.db", ids, args.records_wait_s
                )
                lv.load["cp_errors"] = cp_errors(cp.log()[log_before:])
                lv.verdict = verdict(lv.load, args)
                levels.append(lv)
                print(
                    json.dumps(
                        {
                            "runners": n_runners,
                            "streams": streams,
                            "verdict": lv.verdict,
                            **{k: v for k, v in lv.load.items()},
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(2)
                if lv.verdict != "holds":
                    break
    finally:
        if swarm_ is not None:
            swarm_.stop()
        cp.stop()
        if args.keep_log:
            args.keep_log.write_text(cp.log())
        shutil.rmtree(tmp, ignore_errors=True)
    return levels


def table(levels: list[Level], args: argparse.Namespace, started: str) -> str:
    lines = [
        "## Scale: simulated runners and concurrent streams on one control plane "
        "(`bench/bench_scale.py`)",
        "",
        f"Machine: {started}; {load_at_end()}.",
        f"Taken: {time.strftime('%Y-%m-%d %H:%M %Z')}. {args.note}".rstrip(),
        (
            "Control plane: one `control-plane serve` process (SQLite, uvicorn, one event loop). "
            "Runners: SIMULATED (`bench/sim_runner.py`, real enrollment, real tunnel client, one "
            f"connection each; {args.slots} slots, first token at once, then {args.decode_tps:g} "
            f"tokens/s per stream), all in one child process. Streams: closed loop, {args.tokens} "
            f"tokens each ({request_s(args):g} s, so streams ÷ {request_s(args):g} new requests "
            f"per second); {args.window_s:g} s measured after every stream has started."
        ),
        f"Reproduce: `{args.command}`.",
        "",
        (
            "| runners | connect s | idle CP cores | idle CP RSS MiB | streams | requests ended | "
            "failed + stalled | TTFT p50 ms "
            "| TTFT p99 ms | ITL p99 ms (nominal) | requests/s | tok/s (offered) | CP cores | CP "
            "CPU ms / request "
            "| CP RSS MiB | swarm cores | records: accepted / written / lost | verdict |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    nominal = 1000 / args.decode_tps
    for lv in levels:
        ld = lv.load
        rec = ld["records"]
        lines.append(
            f"| {lv.runners} | {lv.connect_s:.0f} | {lv.idle['cores']['control plane']:.2f} | "
            f"{lv.idle['rss_mb']['control plane']:.0f} | {lv.streams} | {ld['requests']} | "
            f"{ld['failed'] + ld['stalled']} | {ld['ttft_p50_ms']:.0f} | {ld['ttft_p99_ms']:.0f} | "
            f"{ld['itl_p99_ms']:.0f} ({nominal:.0f}) | {ld['sent'] / args.window_s:.1f} | "
            f"{ld['tok_s']:,.0f} ({ld['offered_tok_s']:,.0f}) | {ld['cores']['control plane']:.2f} "
            f"| {cpu_ms_per_request(ld, args):.1f} | {ld['rss_mb']['control plane']:.0f} | "
            f"{ld['cores']['runners (swarm)']:.2f} | {rec['accepted']:,} / {rec['recorded']:,} / "
            f"**{rec['lost']}** | {lv.verdict} |"
        )
    lines += [
        "",
        (
            "TTFT here is all overhead: the simulated engine sends its first token at once. "
            "Connect s: enrollment + registration + handshake of the runners added at that level. "
            "CP CPU ms / request: control-plane CPU seconds in the window ÷ requests sent in it "
            "(it includes relaying every token). Records: requests of the whole level answered "
            "with an `x-request-id`, those with a request record and exactly one audit event once "
            "the writer caught up, and the difference — the product rule is that it is 0."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="100 runners x 1,000 streams; 1,000 runners x 1,000 streams (default)",
    )
    mode.add_argument(
        "--full", action="store_true", help="then 2,000 and 4,000 streams; longer windows"
    )
    p.add_argument(
        "--plan",
        help="runners:streams,streams;runners:... e.g. 100:1000;1000:1000,2000 "
        "(each runner count adds to the last; stream levels stop at the first that breaks)",
    )
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--decode-tps", type=float, default=2.0)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--window-s", type=float)
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument("--break-ttft-s", type=float, default=2.0)
    p.add_argument(
        "--records-wait-s",
        type=float,
        default=120.0,
        help="after a level, how long the control plane may take to write its request records",
    )
    p.add_argument("--note", default="")
    p.add_argument("--keep-log", type=Path, help="copy the control plane's log here at the end")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--swarm", help=argparse.SUPPRESS)
    p.add_argument("--admin-key", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.swarm:
        swarm(args.swarm, args.admin_key, args.slots, args.decode_tps)
        return {}
    args.window_s = args.window_s or (30.0 if args.full else 15.0)
    if args.plan:
        args.plan = [
            (int(r), [int(x) for x in ss.split(",")])
            for r, ss in (level.split(":") for level in args.plan.split(";"))
        ]
    else:
        args.plan = [(100, [1000]), (1000, [1000, 2000, 4000] if args.full else [1000])]
    args.command = ".venv/bin/python bench/bench_scale.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    started = machine()
    levels = run_async(bench(args))
    text = table(levels, args, started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps([lv.__dict__ for lv in levels], indent=2, default=str))
    if not args.no_write:
        write_section(BEGIN, END, text)
    return {"levels": [lv.__dict__ for lv in levels], "text": text}


if __name__ == "__main__":
    main()
