"""Soak: a runner on a flapping link, under steady load (issue 27; the short version is a test).

The control plane and the runner each live in a network namespace made here;
the runner's only way out is a fault-injecting TCP proxy (latency, jitter,
retransmission-like stalls for loss) and every ``--every`` seconds its link is
cut for ``--partition`` seconds by an iptables DROP inside its namespace.
Two clients send short chats all along. Reported: answers, clear errors,
anything else, answers without exactly one ok record (lost) or records
without an answer (duplicated), how long the runner took to come back after
each heal, and both processes' memory at the start and the end. Needs root.

    .venv/bin/python bench/bench_flapping.py --minutes 3     # rewrites its section of
    bench/README.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from _repo import ROOT

from harness.flapping import Load, NsControlPlane, NsRunner, connected
from harness.netns import FaultProxy, Namespace, netns_unavailable
from harness.processes import tenant_records, wait_until

BEGIN, END = "<!-- flapping:begin -->", "<!-- flapping:end -->"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(args: argparse.Namespace) -> dict:
    cp_ns, runner_ns = Namespace(subnet=233).create(), Namespace(subnet=234).create()
    tmp_dir = TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    cp = NsControlPlane(cp_ns, tmp).start()
    one_way = args.latency_ms / 2000
    proxy = FaultProxy(
        runner_ns.host_ip,
        (cp_ns.ip, cp.port),
        delay_s=one_way,
        jitter_s=args.jitter_ms / 1000,
        loss=args.loss,
        loss_stall_s=0.3,
    ).start()
    runner = NsRunner(runner_ns, cp, tmp, f"http://{runner_ns.host_ip}:{proxy.port}")
    load = Load(cp.url, "")
    threads: list[threading.Thread] = []
    back: list[float] = []
    try:
        load.key = cp.api_key()
        runner.start()
        runner_id = runner.wait_connected(load.key)
        threads = [
            threading.Thread(target=load.worker, args=(n,), daemon=True)
            for n in range(args.clients)
        ]
        for t in threads:
            t.start()
        wait_until(lambda: len(load.answered) >= 3, 120, "first answers")
        assert cp.proc is not None and runner.proc is not None
        rss0 = (rss_mib(cp.proc.pid), rss_mib(runner.proc.pid))
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() + args.every <= end:
            time.sleep(args.every - args.partition)
            runner_ns.partition()
            time.sleep(args.partition)
            runner_ns.heal()
            healed = time.monotonic()
            wait_until(
                lambda: connected(cp, load.key, runner_id),
                120,
                "the runner to come back",
                interval=0.2,
            )
            back.append(time.monotonic() - healed)
        time.sleep(5)
        rss1 = (rss_mib(cp.proc.pid), rss_mib(runner.proc.pid))
    finally:
        load.stop.set()
        for t in threads:
            t.join(120)
        runner.stop(timeout=15)
        proxy.close()
    try:
        wait_until(
            lambda: (
                {r["id"] for r in tenant_records(cp.database_url, "default") if r["status"] == "ok"}
                >= set(load.answered)
            ),
            30,
            "records",
        )
    except TimeoutError:
        pass
    ok = [r["id"] for r in tenant_records(cp.database_url, "default") if r["status"] == "ok"]
    cp.stop()
    cp_ns.destroy()
    runner_ns.destroy()
    tmp_dir.cleanup()
    answered = set(load.answered)
    errors: dict[str, int] = {}
    for status, code in load.errors:
        errors[f"{status} {code}"] = errors.get(f"{status} {code}", 0) + 1
    return {
        "answered": len(load.answered),
        "errors": errors,
        "unclear": load.unclear,
        "lost": len(answered - set(ok)),
        "unanswered_ok": len(set(ok) - answered),
        "duplicated": len(load.answered) - len(answered),
        "back": back,
        "rss0": rss0,
        "rss1": rss1,
        "stalls": proxy.stalls,
        "hung": sum(t.is_alive() for t in threads),
    }


def section(r: dict, args: argparse.Namespace, started: str) -> str:
    back = ", ".join(f"{b:.1f}" for b in r["back"]) or "none"
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
    machine = (
        f"{platform.processor() or platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    command = (
        f".venv/bin/python bench/bench_flapping.py --minutes {args.minutes} --every {args.every} "
        f"--partition {args.partition} --latency-ms {args.latency_ms} "
        f"--jitter-ms {args.jitter_ms} --loss {args.loss} --clients {args.clients}"
    )
    # Markdown joins the lines of a paragraph: the prose below is wrapped for the source only.
    return f"""{BEGIN}
## Links that flap (`bench/bench_flapping.py`)

Machine: {machine}.
Taken: {started}. Command: `{command}`.
Setup: control plane and runner (embedded SmolLM2, 2 slots) in two network namespaces; the runner
reaches the control plane only through a fault-injecting TCP proxy ({args.latency_ms} ms round
trip, up to {args.jitter_ms} ms jitter each way, {args.loss:.0%} of chunks stalled 0.3 s as a lost
segment's retransmission would be); every {args.every} s an iptables DROP in the runner's namespace
cuts its link for {args.partition} s; {args.clients} clients send 3-token chats back to back;
tunnel pings 1 s / 2 s on both ends.

| measure | value |
|---|---|
| answers | {r["answered"]} |
| clear errors (OpenAI error envelope) | {errs} |
| anything else (hang, transport error, bad body) | {len(r["unclear"])} |
| client requests never ended | {r["hung"]} |
| answers without an ok record (lost) | {r["lost"]} |
| ok records without an answer | {r["unanswered_ok"]} |
| answers seen twice (duplicated) | {r["duplicated"]} |
| runner back after each heal, s | {back} |
| control plane RSS, MiB (after warm-up → end) | {r["rss0"][0]:.0f} → {r["rss1"][0]:.0f} |
| runner RSS, MiB (after warm-up → end) | {r["rss0"][1]:.0f} → {r["rss1"][1]:.0f} |
| chunks stalled by the proxy | {r["stalls"]} |
{END}"""


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=3)
    p.add_argument("--every", type=float, default=60, help="seconds between partitions")
    p.add_argument("--partition", type=float, default=10, help="seconds each partition lasts")
    p.add_argument("--latency-ms", type=float, default=200, help="round trip added by the proxy")
    p.add_argument("--jitter-ms", type=float, default=50)
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/README.md alone"
    )
    args = p.parse_args()
    if (reason := netns_unavailable()) is not None:
        sys.exit(reason)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = section(soak(args), args, started)
    print(text)
    if not args.no_write:
        readme = ROOT / "bench" / "README.md"
        body = readme.read_text()
        if BEGIN in body:
            body = body[: body.index(BEGIN)] + text + body[body.index(END) + len(END) :]
        else:
            body = body.rstrip("\n") + "\n\n" + text + "\n"
        readme.write_text(body)


if __name__ == "__main__":
    main()
