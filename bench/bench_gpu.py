"""GPU benchmark: one engine on an NVIDIA GPU, measured direct and through Outpost.

Three engine set-ups:

* default: the runner plans and starts the engine itself (``runner local-runner --model
  PATH --engine llama-cpp-python``: llama-cpp-python's server, capacity 1);
* ``--engine vllm``: ``runner local-runner --model HF_DIR`` with no ``--engine``: the planner
  must choose vLLM by itself (NVIDIA GPU, Hugging Face-format model, ``import vllm`` works),
  and the run stops if it chose anything else; requests ask ``ignore_eos`` so each runs to
  ``max_tokens``; ``--record DIR`` saves the engine's real ``/metrics``, ``/v1/models``,
  answers and ``GET /api/runners`` (tests/runner/data/ holds them as fixtures);
* ``--llama-server BIN``: llama.cpp's own server (``BIN -m PATH -ngl 999 -np 16``),
  started here, and ``runner local-runner --attach URL --parallel 16`` in front of it.

The runner enrols with a control plane on loopback and serves the engine through the
tunnel. Both paths hit that *same* engine process:

* ``direct``  — client → the engine's own loopback port (found from the runner's child);
* ``outpost`` — client → control plane ``/v1/chat/completions`` → WebSocket tunnel → runner →
engine.

Streaming chat completions, ``temperature 0``, ``max_tokens`` per request (128). For each
concurrency (``--streams``, default 1 and 16) and each path, every stream sends ``--rounds-single``
(1 stream) or ``--rounds`` (more streams) requests back to back; the table gives aggregate tokens/s
(all tokens ÷ wall time of the phase), per-stream decode tokens/s (tokens after the first ÷ time
from first to last token), time to first token and inter-token latency percentiles.

    python bench/bench_gpu.py --model PATH.gguf [--llama-server BIN] [--json OUT.json] [--no-write]
    python bench/bench_gpu.py --engine vllm --model HF_DIR --streams 1,16,64,256 [--record DIR]
    python bench/bench_gpu.py --render A.json B.json   # one README section from saved runs

Writes its table(s) between ``<!-- gpu:begin -->``/``<!-- gpu:end -->`` in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)
import httpx
import psutil

import bench.load
from bench.load import (
    Conn,
    Sample,
    chat_body,
    pct,
    stream_request,
    versions,
    write_section,
)
from harness.gpu_measure import (
    CpuWindow,
    finish_profiles,
    machine_line,
    start_profiles,
)
from harness.gpu_measure import summarize as summarize_profile
from harness.processes import ControlPlaneProcess, free_port, wait_until

BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
#: vLLM's section is apart from llama.cpp's: each is rewritten only by its own runs.
VLLM_BEGIN, VLLM_END = "<!-- gpu-vllm:begin -->", "<!-- gpu-vllm:end -->"
#: A content token in an SSE chunk, whatever the JSON spacing: llama-cpp-python's server
#: writes ``"content": "x"`` (json.dumps defaults), llama.cpp's ``"content":"x"``.
_TOKEN = re.compile(rb'"content":\s?"(?!")')
#: The usage chunk (``stream_options.include_usage``): the engine's own count of generated tokens.
_USAGE = re.compile(rb'"completion_tokens":\s?(\d+)')


class _AnyJsonParser(bench.load._Parser):
    """bench.load's parser, counting content chunks with either JSON spacing."""

    def on_body(self, data: bytes) -> None:
        if self.s.status != 200:
            self.body += data
            return
        # sse-starlette (llama-cpp-python's server) ends events with CRLF CRLF; vLLM and llama.cpp
        # with LF LF.
        data = (self._tail + data).replace(b"\r\n", b"\n")
        cut = data.rfind(b"\n\n")
        whole, self._tail = (data[: cut + 2], data[cut + 2 :]) if cut >= 0 else (b"", data)
        if usage := _USAGE.findall(whole):
            # vLLM puts several tokens in one chunk when its output loop runs behind, so the
            # chunks undercount under load; the usage chunk has the true number.
            self.s.completion_tokens = int(usage[-1])  # type: ignore[attr-defined]
        n = len(_TOKEN.findall(whole))
        if n <= 0:
            if b'"error"' in whole and b"data: " in whole:
                self.s.error = whole[:200].decode(errors="replace")
            return
        if self.last is None:
            self.s.ttft = self.now - self.s.sent
        else:
            self.s.gaps.append(self.now - self.last)
        self.s.gaps.extend([0.0] * (n - 1))
        self.last = self.now
        self.s.tokens += n


bench.load._Parser = _AnyJsonParser  # stream_request builds its parser from this module global


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        return (
            "; ".join(line.strip() for line in out.splitlines() if line.strip()) or "no NVIDIA GPU"
        )
    except (OSError, subprocess.SubprocessError):
        return "no NVIDIA GPU (nvidia-smi missing)"


def gpu_apps() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


#: The runner's own Prometheus listener (``--metrics-port``): --record reads the engine counters it
#: exports.
RUNNER_METRICS_PORT = free_port()


def start_runner(cp: ControlPlaneProcess, state: Path, args: list[str]) -> subprocess.Popen:
    state.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OUTPOST_ENROLLMENT_TOKEN": cp.enrollment_token("gpu-runner"),
        "OUTPOST_LOG_LEVEL": "warning",
        "OUTPOST_METRICS_PORT": str(RUNNER_METRICS_PORT),
    }
    env.pop("OUTPOST_DATABASE_URL", None)
    argv = [
        sys.executable,
        "-m",
        "outpost.runner.cli",
        "local-runner",
        "--control-plane",
        cp.url,
        "--state-dir",
        str(state),
        *args,
    ]
    log = open(state / "runner.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_llama_server(
    binary: str, model: str, parallel: int, ctx_per_slot: int, log_path: Path, timeout: float
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    argv = [
        binary,
        "-m",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-ngl",
        "999",
        "-np",
        str(parallel),
        "-c",
        str(parallel * ctx_per_slot),
        "--alias",
        Path(model).name.split(".")[0].lower(),
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama-server exited: {log_path.read_text(errors='replace')[-4000:]}"
            )
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200

    wait_until(healthy, timeout, "llama-server", interval=0.3)
    return proc, port


def engine_port(runner: subprocess.Popen) -> tuple[int, int]:
    """(pid, port) of the engine the runner started: its child running an OpenAI server."""
    for child in psutil.Process(runner.pid).children(recursive=True):
        argv = child.cmdline()
        if "--port" in argv:
            return child.pid, int(argv[argv.index("--port") + 1])
    raise RuntimeError("the runner has no engine child with --port")


async def phase(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    streams: int,
    rounds: int,
    seconds: float = 0.0,
) -> tuple[list[Sample], float]:
    """``streams`` clients, each sending requests back to back: ``rounds`` of them, or with
    ``seconds`` > 0 as many as start within that time (the last one runs to its end)."""

    async def one_stream() -> list[Sample]:
        conn = Conn(host, port)
        if seconds > 0:
            out, deadline = [], time.perf_counter() + seconds
            while not out or time.perf_counter() < deadline:
                out.append(await stream_request(conn, path, body, headers))
        else:
            out = [await stream_request(conn, path, body, headers) for _ in range(rounds)]
        conn.close()
        return out

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream() for _ in range(streams)))
    return [s for r in results for s in r], time.perf_counter() - t0


def summarize(name: str, streams: int, samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    # Gaps between content chunks; a chunk of several tokens adds zeros (bench.load's parser).
    itl = [g for s in ok for g in s.gaps]
    chunks = sum(s.tokens for s in ok)
    for s in ok:  # the engine's usage count where the stream carried one (see _AnyJsonParser)
        s.tokens = getattr(s, "completion_tokens", None) or s.tokens
    decode = [(s.tokens - 1) / sum(s.gaps) for s in ok if s.tokens > 1 and sum(s.gaps) > 0]
    # Last content chunk → end of the response ([DONE], the usage chunk, the record's commit).
    tail = [s.done - (s.sent + s.ttft + sum(s.gaps)) for s in ok if s.ttft is not None]
    tokens = sum(s.tokens for s in ok)
    return {
        "path": name,
        "streams": streams,
        "requests": len(samples),
        "ok": len(ok),
        "tokens": tokens,
        "content_chunks": chunks,
        "wall_s": wall,
        "agg_tok_s": tokens / wall if wall else 0.0,
        "stream_tok_s": statistics.fmean(decode) if decode else float("nan"),
        "ttft_p50_ms": pct(ttft, 50) * 1000,
        "ttft_p95_ms": pct(ttft, 95) * 1000,
        "ttft_mean_ms": statistics.fmean(ttft) * 1000 if ttft else float("nan"),
        "ttft_p99_ms": pct(ttft, 99) * 1000,
        "itl_p50_ms": pct(itl, 50) * 1000,
        "itl_p95_ms": pct(itl, 95) * 1000,
        "itl_p99_ms": pct(itl, 99) * 1000,
        "tail_p50_ms": pct(tail, 50) * 1000,
        "tail_p95_ms": pct(tail, 95) * 1000,
        "errors": sorted({s.error or "" for s in samples if not s.ok})[:3],
    }


def summarize_runs(
    name: str, streams: int, runs: list[tuple[list[Sample], float, CpuWindow]]
) -> dict:
    """One row from a path's alternating segments: samples and wall times pooled; CPU of each
    process tree over all segments ÷ tokens (µs/token); the host's busy cores and load."""
    samples = [x for r in runs for x in r[0]]
    wall = sum(r[1] for r in runs)
    row = summarize(name, streams, samples, wall)
    tokens = row["tokens"] or 1
    for tree in runs[0][2].trees:
        row[f"{tree}_us_tok"] = sum(w.cpu_s.get(tree, 0.0) for _, _, w in runs) / tokens * 1e6
    row["host_busy_cores"] = sum(w.host_busy_cores * w.wall_s for _, _, w in runs) / (
        sum(w.wall_s for _, _, w in runs) or 1
    )
    row["load_1m"] = [round(v, 2) for _, _, w in runs for v in w.load_1m]
    row["segments"] = len(runs)
    return row


async def profiled_phase(
    args: argparse.Namespace,
    path: tuple[str, int, dict[str, str]],
    body: bytes,
    trees: dict[str, tuple[int, frozenset[int]]],
    cp_pid: int,
    runner_pid: int,
) -> dict:
    """One more through-Outpost phase at ``--profile-streams``, with py-spy recording the control
    plane and the runner from 1 s in to 1 s before its end; its row shows the profiler's cost."""
    host, port, hdr = path
    streams, seconds = args.profile_streams, args.profile_seconds
    out = args.profile_dir or Path(tempfile.mkdtemp(prefix="outpost-pyspy-"))
    out.mkdir(parents=True, exist_ok=True)

    async def profile() -> list:
        await asyncio.sleep(1.0)
        return start_profiles(
            {"control_plane": cp_pid, "runner": runner_pid}, max(1.0, seconds - 2), out
        )

    window = CpuWindow(trees)
    window.start()
    started = asyncio.create_task(profile())
    samples, wall = await phase(host, port, "/v1/chat/completions", body, hdr, streams, 1, seconds)
    window.stop()
    raws = finish_profiles(await started)
    row = summarize_runs("outpost + py-spy", streams, [(samples, wall, window)])
    print(json.dumps(row), flush=True)
    text = []
    for name, raw in raws.items():
        text.append(summarize_profile(raw, row[f"{name}_us_tok"], args.profile_top))
    summary = "\n\n".join(text)
    print(summary, flush=True)
    (out / "pyspy-summary.txt").write_text(summary + "\n")
    return {"row": row, "profile_summary": summary, "profile_streams": streams}


def render(runs: list[tuple[dict, list[dict]]]) -> str:
    """One README section: the common set-up once, then a table per engine set-up."""
    first = runs[0][0]
    vllm = first.get("engine_name") == "vllm"
    counts = sorted({r["streams"] for _, rows in runs for r in rows})
    lines = [
        (
            f"## GPU: {'vLLM' if vllm else 'llama.cpp'} on an NVIDIA GPU, direct vs through "
            "Outpost (`bench/bench_gpu.py`)"
        ),
        "",
        f"Card: **{first['gpu']}**. Host: {first['host']}.",
        "Control plane (SQLite), runner and engine on loopback on the same machine; "
        f"{first['versions']}.",
        (
            f"Workload: streaming chat completions of `{first['model_file']}`, temperature 0, "
            "max_tokens "
            f"{first['max_tokens']}"
            f"{' with ignore_eos (every request runs to max_tokens)' if vllm else ''}; "
            + _schedule(first, counts)
            + f", after {first['warmup']} warm-up requests. `direct` is the engine's own port; "
            "`outpost` is client → control plane → "
            "WebSocket tunnel → "
            "runner → the same engine process. Aggregate tok/s = all tokens ÷ wall time of the "
            "phase; per-stream "
            "decode tok/s = tokens after the first ÷ time from first to last token, averaged over "
            "requests; TTFT = "
            "request written → first content token; ITL = time between consecutive content "
            "chunks, over all "
            "requests of the phase"
            + (
                " (vLLM sends one token per chunk until its output loop runs behind, then "
                "several: tokens are the "
                "usage chunk's `completion_tokens`, chunks only time the ITL)."
                if vllm
                else "."
            )
        ),
    ]
    nan = float("nan")
    for meta, rows in runs:
        settings = "".join(
            f", control plane with `{k}={v}`" for k, v in (meta.get("cp_env") or {}).items()
        )
        lines += [
            "",
            f"### {meta['title']}{settings}",
            "",
            (
                f"Engine: {meta['engine']} ({meta['offload']}; GPU memory of the engine process: "
                f"{meta['gpu_mem'] or 'n/a'}). Reproduce: `{meta['command']}`."
            ),
            "",
            (
                "| path | streams | requests ok | tokens | aggregate tok/s | ÷ direct | "
                "per-stream decode tok/s "
                "| TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | ITL p50 ms | ITL p95 ms | ITL p99 ms |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        direct = {r["streams"]: r["agg_tok_s"] for r in rows if r["path"] == "direct"}
        for r in rows:
            ratio = r["agg_tok_s"] / direct[r["streams"]] if direct.get(r["streams"]) else nan
            lines.append(
                f"| {r['path']} | {r['streams']} | {r['ok']}/{r['requests']} | {r['tokens']} | "
                f"{r['agg_tok_s']:.1f} | {ratio:.3f} | {r['stream_tok_s']:.1f} | "
                f"{r['ttft_p50_ms']:.1f} | "
                f"{r['ttft_p95_ms']:.1f} | {r.get('ttft_p99_ms', nan):.1f} | "
                f"{r.get('itl_p50_ms', nan):.2f} | "
                f"{r.get('itl_p95_ms', nan):.2f} | {r.get('itl_p99_ms', nan):.2f} |"
            )
        if any("control_plane_us_tok" in r for r in rows):
            lines += ["", *_ratio_table(meta, rows)]
        if meta.get("notes"):
            lines += ["", *meta["notes"]]
    return "\n".join(lines)


def _schedule(meta: dict, counts: list[int]) -> str:
    """How many requests each phase sent, as the run was asked."""
    many = ", ".join(str(c) for c in counts if c > 1)
    if meta.get("seconds"):
        return (
            f"at {', '.join(str(c) for c in counts)} concurrent streams, each stream sending "
            f"requests back to back for {meta['seconds']:g} s per segment, "
            f"{meta.get('repeats', 1)} segment(s) per path alternating direct and Outpost "
            "(pooled in one row)"
        )
    return (
        f"{meta['rounds_single']} requests on one stream, {meta['rounds']} per stream with "
        f"{many} streams, back to back"
    )


def _ratio_table(meta: dict, rows: list[dict]) -> list[str]:
    """Per concurrency: Outpost ÷ direct, the TTFT Outpost adds, and the CPU each side spends per
    token it relays (the engine's and the client's too, for scale)."""
    nan = float("nan")
    by = {(r["path"], r["streams"]): r for r in rows}
    out = [
        f"Machine: {meta.get('machine', '?')} (at the start; at the end: load average "
        f"{meta.get('machine_end', '?').rpartition('load average ')[2]}). Tree: "
        f"{meta.get('commit') or '?'}. Each row: {meta.get('repeats', 1)} segment(s) per path of "
        f"{meta.get('seconds') or 'fixed rounds'} s, alternating direct and Outpost.",
        "",
        "| streams | direct tok/s | Outpost tok/s | Outpost ÷ direct "
        "| TTFT added p50 / p95 / p99 ms | control plane CPU µs/token | runner CPU µs/token "
        "| engine CPU µs/token (direct / Outpost) | client CPU µs/token "
        "| host busy cores (direct / Outpost) | last token → end added p50 / p95 ms |",
        "|---:|---:|---:|---:|---|---:|---:|---|---:|---|---|",
    ]
    for streams in sorted({r["streams"] for r in rows}):
        d, o = by.get(("direct", streams)), by.get(("outpost", streams))
        if d is None or o is None:
            continue
        added = " / ".join(
            f"{o.get(f'ttft_{q}_ms', nan) - d.get(f'ttft_{q}_ms', nan):+.1f}"
            for q in ("p50", "p95", "p99")
        )
        ratio = o["agg_tok_s"] / d["agg_tok_s"] if d["agg_tok_s"] else nan
        tail = (  # absent from runs before it was measured
            " / ".join(f"{o[f'tail_{q}_ms'] - d[f'tail_{q}_ms']:+.1f}" for q in ("p50", "p95"))
            if "tail_p50_ms" in o
            else "–"
        )
        out.append(
            f"| {streams} | {d['agg_tok_s']:.0f} | {o['agg_tok_s']:.0f} | **{ratio:.3f}** | "
            f"{added} | {o['control_plane_us_tok']:.0f} | {o['runner_us_tok']:.0f} | "
            f"{d['engine_us_tok']:.0f} / {o['engine_us_tok']:.0f} | {o['client_us_tok']:.0f} | "
            f"{d['host_busy_cores']:.1f} / {o['host_busy_cores']:.1f} | {tail} |"
        )
    prof = by.get(("outpost + py-spy", meta.get("profile_streams")))
    if prof is not None:
        out += [
            "",
            f"Under py-spy ({prof['streams']} streams; the profile: docs/performance.md, "
            "'GPU host profile'): "
            f"{prof['agg_tok_s']:.0f} tok/s "
            f"through Outpost; control plane {prof['control_plane_us_tok']:.0f} µs/token, runner "
            f"{prof['runner_us_tok']:.0f} µs/token.",
        ]
    return out


async def measure(
    args: argparse.Namespace,
    paths: dict[str, tuple[str, int, dict[str, str]]],
    body: bytes,
    trees: dict[str, tuple[int, frozenset[int]]],
    eport: int,
) -> list[dict]:
    """Per concurrency, ``--repeats`` segments of each path, alternating; one row per path."""
    rows = []
    for streams in args.streams:
        rounds = args.rounds_single if streams == 1 else args.rounds
        runs: dict[str, list[tuple[list[Sample], float, CpuWindow]]] = {
            "direct": [],
            "outpost": [],
        }
        for rep in range(args.repeats):  # alternate the order: neither path always goes first
            for name in ("direct", "outpost") if rep % 2 == 0 else ("outpost", "direct"):
                host, port, hdr = paths[name]
                busy = None
                if args.record and name == "direct" and streams == max(args.streams) and rep == 0:
                    busy = asyncio.create_task(_record_busy(args.record, eport))
                window = CpuWindow(trees)
                window.start()
                samples, wall = await phase(
                    host, port, "/v1/chat/completions", body, hdr, streams, rounds, args.seconds
                )
                window.stop()
                if busy is not None:
                    await busy
                runs[name].append((samples, wall, window))
        for name in ("direct", "outpost"):
            row = summarize_runs(name, streams, runs[name])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def describe(
    args: argparse.Namespace, attached: bool, engine_argv: list[str]
) -> tuple[str, str, str]:
    """The table's title, the engine's description and the command that reproduces the run."""
    model_file = Path(args.model).name
    streams_arg = ",".join(str(n) for n in args.streams)
    if attached:
        title = (
            f"llama.cpp's `llama-server`, {args.parallel} slots, attached (`--attach URL "
            f"--parallel {args.parallel}`)"
        )
        engine = (
            f"llama.cpp `llama-server` ({_server_version(args.llama_server)}), `-ngl 999 -np "
            f"{args.parallel} "
            f"-c {args.parallel * args.ctx_per_slot}`, started by the benchmark; the runner "
            "runs "
            f"`local-runner --attach http://127.0.0.1:PORT --parallel {args.parallel}`"
        )
        command = (
            f"python bench/bench_gpu.py --model {model_file} --llama-server BIN --parallel "
            f"{args.parallel} --rounds {args.rounds} --rounds-single {args.rounds_single} "
            f"--max-tokens {args.max_tokens}"
        )
    elif args.engine == "vllm":
        title = (
            "vLLM, planned and started by the runner (`runner local-runner --model DIR`, "
            "no `--engine`)"
        )
        engine = (
            f"vLLM {_dist_version('vllm')} (torch {_dist_version('torch')}), chosen by the "
            "planner and "
            f"started by `runner local-runner --model {model_file}` as "
            f"`{_argv_text(engine_argv)}`"
        )
        command = (
            f"python bench/bench_gpu.py --engine vllm --model {model_file} --streams {streams_arg} "
            f"--rounds {args.rounds} --rounds-single {args.rounds_single} --max-tokens "
            f"{args.max_tokens}" + "".join(f" --cp-env {k}={v}" for k, v in args.cp_env)
        )
    else:
        title = f"{args.engine}, planned and started by the runner"
        engine = (
            f"llama-cpp-python {_llama_cpp_version()} server, capacity 1, planned and started by "
            f"`runner local-runner --model {model_file} --engine {args.engine}`"
            if args.engine == "llama-cpp-python"
            else args.engine
        )
        command = (
            f"python bench/bench_gpu.py --model {model_file} --rounds {args.rounds} "
            f"--rounds-single {args.rounds_single} --max-tokens {args.max_tokens}"
        )
    if args.seconds:  # time-boxed: the round counts do not apply
        command = re.sub(r" --rounds(-single)? \d+", "", command)
    command += (f" --streams {streams_arg}" if "--streams" not in command else "") + "".join(
        f" --{k} {v}"
        for k, v in (
            ("seconds", args.seconds),
            ("repeats", args.repeats),
            ("profile-streams", args.profile_streams),
        )
        if v
    )
    return title, engine, command


def runner_argv(args: argparse.Namespace, server_port: int) -> list[str]:
    """``runner local-runner``'s arguments for the engine set-up asked for."""
    if server_port:
        return ["--attach", f"http://127.0.0.1:{server_port}", "--parallel", str(args.parallel)]
    if args.engine == "vllm":  # no --engine: the planner must choose vLLM itself
        return ["--model", args.model]
    return ["--model", args.model, "--engine", args.engine, "--threads", str(args.threads)]


async def warm_up(
    args: argparse.Namespace, paths: dict[str, tuple[str, int, dict[str, str]]], body: bytes
) -> None:
    """Compile and fill caches on both paths; stop at once if either fails."""
    for i in range(args.warmup):
        name = "direct" if i % 2 == 0 else "outpost"
        host, port, hdr = paths[name]
        s, _ = await phase(host, port, "/v1/chat/completions", body, hdr, 1, 1)
        if not s[0].ok:
            raise RuntimeError(
                f"warm-up on {name} failed: status {s[0].status}, {s[0].tokens} tokens, "
                f"{s[0].error}"
            )


async def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    tmp = Path(tempfile.mkdtemp(prefix="outpost-gpu-"))
    # start() runs its own event loop (harness.processes.run_db): not on this one.
    cp = await asyncio.to_thread(
        ControlPlaneProcess(
            tmp / "cp",
            f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}",
            extra_env={"OUTPOST_LOG_LEVEL": "warning", **dict(args.cp_env)},
        ).start
    )
    runner = server = None
    try:
        key = cp.api_key("default", "gpu-bench")
        t_start = time.perf_counter()
        sport = 0
        if args.llama_server:
            server, sport = start_llama_server(
                args.llama_server,
                args.model,
                args.parallel,
                args.ctx_per_slot,
                tmp / "llama-server.log",
                args.ready_timeout,
            )
        runner_args = runner_argv(args, sport if server is not None else 0)
        runner = start_runner(cp, tmp / "runner", runner_args)

        def connected() -> bool:
            if runner.poll() is not None:
                raise RuntimeError(
                    f"runner exited: {(tmp / 'runner' / 'runner.log').read_text()[-4000:]}"
                )
            log = tmp / "runner" / "logs" / "engine.log"
            # An engine that crashed while loading is restarted by the supervisor and fails again:
            # stop at the first traceback rather than wait out the whole timeout (device time is
            # scarce).
            if (
                args.engine == "vllm"
                and log.exists()
                and "Traceback (most recent call last)" in (text := log.read_text(errors="replace"))
            ):
                raise RuntimeError(f"vLLM failed to start:\n{text[-6000:]}")
            return bool(cp.models(key))

        wait_until(connected, args.ready_timeout, "the runner to serve its model", interval=0.5)
        ready_s = time.perf_counter() - t_start
        model = cp.models(key)[0]
        if server is not None:
            epid, eport = server.pid, sport
            engine_log = tmp / "llama-server.log"
        else:
            epid, eport = engine_port(runner)
            engine_log = tmp / "runner" / "logs" / "engine.log"
        log_text = engine_log.read_text(errors="replace") if engine_log.exists() else ""
        engine_argv = psutil.Process(epid).cmdline()
        print("engine argv:", " ".join(engine_argv), flush=True)
        if args.engine == "vllm":
            if "vllm.entrypoints.cli.main" not in engine_argv:
                raise RuntimeError(f"the runner did not start vLLM: {engine_argv}")
            offload_s = _vllm_log_summary(log_text)
        else:
            offload = re.findall(r"offloaded (\d+)/(\d+) layers to GPU", log_text)
            offload_s = (
                f"offloaded {offload[-1][0]}/{offload[-1][1]} layers to GPU"
                if offload
                else "no 'offloaded N/N layers' line in the engine's log"
            )
        # vLLM's API server holds no GPU memory: its engine-core child does.
        tree = {str(epid), *(str(c.pid) for c in psutil.Process(epid).children(recursive=True))}
        apps = [line for line in gpu_apps().splitlines() if line.split(",")[0].strip() in tree]
        gpu_mem = ", ".join(line.split(",")[1].strip() for line in apps)
        print(
            f"ready in {ready_s:.1f}s; model {model}; engine pid {epid} port {eport}; {offload_s}; "
            f"GPU mem {gpu_mem}",
            flush=True,
        )

        extra = (
            {"ignore_eos": True, "stream_options": {"include_usage": True}}
            if args.engine == "vllm"
            else {}
        )
        body = chat_body(model, args.max_tokens, **extra)
        auth = {"Authorization": f"Bearer {key}"}
        paths = {"direct": ("127.0.0.1", eport, {}), "outpost": ("127.0.0.1", cp.port, auth)}
        if args.record:
            record_engine(args.record, "idle", eport, model, cp, auth)
        await warm_up(args, paths, body)
        if args.wait_file:  # e.g. a build running beside the engine's start: not during phases
            wait_until(args.wait_file.exists, args.ready_timeout, f"{args.wait_file}", interval=1)
        assert cp.proc is not None
        trees = {
            "control_plane": (cp.proc.pid, frozenset[int]()),
            "runner": (runner.pid, frozenset({epid})),
            "engine": (epid, frozenset[int]()),
            "client": (os.getpid(), frozenset({cp.proc.pid, runner.pid, epid})),
        }
        machine = machine_line(gpu_name())
        print("machine:", machine, flush=True)
        rows = await measure(args, paths, body, trees, eport)
        profile = {}
        if args.profile_streams:
            try:
                profile = await profiled_phase(
                    args, paths["outpost"], body, trees, cp.proc.pid, runner.pid
                )
                rows.append(profile.pop("row"))
            except Exception as exc:  # noqa: BLE001 - the table above must survive the profiler
                print(f"profiled phase failed: {exc!r}", flush=True)
        if args.record:
            record_engine(args.record, "loaded", eport, model, cp, auth)
        model_file = Path(args.model).name
        title, engine, command = describe(args, server is not None, engine_argv)
        meta = {
            "title": title,
            "gpu": gpu_name(),
            "host": _host(),
            "engine_name": args.engine,
            "model_file": model_file,
            "engine": engine,
            "offload": offload_s,
            "gpu_mem": gpu_mem,
            "ready_s": ready_s,
            "versions": versions("fastapi", "uvicorn", "websockets", "pydantic", "httptools"),
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "rounds_single": args.rounds_single,
            "warmup": args.warmup,
            "command": command,
            "engine_log_tail": log_text[-3000:],
            "engine_argv": engine_argv,
            "cp_env": dict(args.cp_env),
            "machine": machine,
            "machine_end": machine_line(gpu_name()),
            "seconds": args.seconds,
            "repeats": args.repeats,
            "streams": args.streams,
            "commit": args.commit,
            **profile,
        }
        return meta, rows
    finally:
        _stop(runner, 40)
        _stop(server, 20)
        cp.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def record_engine(
    out: Path, tag: str, eport: int, model: str, cp: ControlPlaneProcess, auth: dict[str, str]
) -> None:
    """The engine's real answers, saved as test fixtures (tests/runner/data/): its Prometheus text,
    and (once loaded) /v1/models, an answer and a streamed answer direct, one through Outpost, and
    the control plane's GET /api/runners once the runner's next status frame is in."""
    out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{eport}"
    (out / f"vllm_metrics_{tag}.txt").write_text(httpx.get(base + "/metrics", timeout=30).text)
    if tag != "loaded":
        return
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    rec: dict = {
        "models": httpx.get(base + "/v1/models", timeout=30).json(),
        "chat_direct": httpx.post(base + "/v1/chat/completions", json=chat, timeout=60).json(),
        "chat_outpost": httpx.post(
            cp.url + "/v1/chat/completions", json=chat, headers=auth, timeout=60
        ).json(),
    }
    with httpx.stream(
        "POST",
        base + "/v1/chat/completions",
        timeout=60,
        json={**chat, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}},
    ) as resp:
        rec["chat_stream_direct_sse"] = resp.read().decode()
    time.sleep(6)  # the runner reports status every 2 s; the counters above included
    rec["api_runners"] = httpx.get(cp.url + "/api/runners", headers=auth, timeout=30).json()
    rec["metrics_after"] = httpx.get(base + "/metrics", timeout=30).text
    rec["runner_metrics"] = httpx.get(
        f"http://127.0.0.1:{RUNNER_METRICS_PORT}/metrics", timeout=30
    ).text
    (out / "vllm_record.json").write_text(json.dumps(rec, indent=2))
    print("recorded:", json.dumps(rec["api_runners"])[:2000], flush=True)


async def _record_busy(out: Path, eport: int) -> None:
    """The engine's metrics one second into the heaviest phase: requests running and waiting, KV
    in use."""
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{eport}/metrics", timeout=30)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_metrics_busy.txt").write_text(resp.text)


def _vllm_log_summary(text: str) -> str:
    """The lines of vLLM's start-up log that say what it put on the GPU."""
    found = []
    for label, pattern in (
        ("weights", r"Model loading took ([\d.]+ ?GiB)"),
        ("KV cache", r"GPU KV cache size: ([\d,]+ tokens)"),
        ("max concurrency", r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+x)"),
        ("CUDA graphs captured in", r"Graph capturing finished in ([\d.]+ ?s)"),
        ("engine init", r"init engine .*? took ([\d.]+ ?s)"),
    ):
        m = re.findall(pattern, text)
        if m:
            found.append(f"{label} {m[-1]}")
    return "; ".join(found) or "no start-up summary in vLLM's log"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _argv_text(argv: list[str]) -> str:
    """The engine's command line with the interpreter's and the model's paths shortened."""
    return " ".join(Path(a).name if a.startswith("/") else a for a in argv)


def _llama_cpp_version() -> str:
    """From the package's source: it may run from a source tree with no installed metadata."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "?"
    match = re.search(r'__version__ = "([^"]+)"', Path(spec.origin).read_text())
    return match[1] if match else "?"


def _server_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "version unknown"
    match = re.search(r"^version: (.+)$", out.stdout + out.stderr, re.MULTILINE)
    return f"version {match[1].strip()}" if match else "version unknown"


def _host() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB "
        f"RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument(
        "--engine",
        default="llama-cpp-python",
        help="llama-cpp-python, or vllm (a Hugging Face-format --model; the runner plans it)",
    )
    parser.add_argument(
        "--streams",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 16],
        help="concurrencies, comma-separated (default 1,16)",
    )
    parser.add_argument(
        "--record", type=Path, help="vllm: save the engine's real output here (fixtures)"
    )
    parser.add_argument(
        "--cp-env",
        action="append",
        default=[],
        type=lambda v: tuple(v.split("=", 1)),
        metavar="NAME=VALUE",
        help="a control plane setting for this run (repeatable)",
    )
    parser.add_argument(
        "--llama-server", help="llama.cpp server binary: start it and attach the runner"
    )
    parser.add_argument(
        "--parallel", type=int, default=16, help="llama-server slots (with --llama-server)"
    )
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument(
        "--render", type=Path, nargs="+", help="write one section from saved --json runs; no run"
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="requests per stream with 16 streams")
    parser.add_argument("--rounds-single", type=int, default=16, help="requests with one stream")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--ready-timeout", type=float, default=420)
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="time-box each segment: streams send requests until this many seconds have passed "
        "(instead of --rounds / --rounds-single)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="segments per path and concurrency, alternating direct/outpost (pooled in one row)",
    )
    parser.add_argument(
        "--profile-streams",
        type=int,
        default=0,
        help="after the table: one more outpost phase at this concurrency under py-spy",
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-dir", type=Path, help="py-spy's raw profiles and summary here")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--wait-file", type=Path, help="once the engine is up, wait for this file before phases"
    )
    parser.add_argument("--commit", default="", help="the tree's commit, for the tables")
    parser.add_argument("--json", type=Path, help="also write meta and rows here")
    parser.add_argument("--note", action="append", default=[], help="a line to add under the table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.render:
        runs = [(d["meta"], d["rows"]) for d in (json.loads(p.read_text()) for p in args.render)]
    else:
        if not args.model:
            parser.error("--model is required")
        meta, rows = asyncio.run(run(args))
        meta["notes"] = args.note
        runs = [(meta, rows)]
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = render(runs)
    print(text)
    if not args.no_write:
        vllm = runs[0][0].get("engine_name") == "vllm"
        write_section(VLLM_BEGIN if vllm else BEGIN, VLLM_END if vllm else END, text)


if __name__ == "__main__":
    main()
