"""GPU benchmark: one llama.cpp engine, measured direct and through Outpost, 1 and 16 streams.

Two engine set-ups, each with every layer offloaded to the GPU:

* default: the runner plans and starts the engine itself (``runner local-runner --model
  PATH --engine llama-cpp-python``: llama-cpp-python's server, capacity 1);
* ``--llama-server BIN``: llama.cpp's own server (``BIN -m PATH -ngl 999 -np 16``),
  started here, and ``runner local-runner --attach URL --parallel 16`` in front of it.

The runner enrols with a control plane on loopback and serves the engine through the
tunnel. Both paths hit that *same* engine process:

* ``direct``  — client → the engine's own loopback port (found from the runner's child);
* ``outpost`` — client → control plane ``/v1/chat/completions`` → WebSocket tunnel → runner → engine.

Streaming chat completions, ``temperature 0``, ``max_tokens`` per request (128).
For each path and each concurrency (1 and 16 streams), every stream sends
``--rounds-single`` (1 stream) or ``--rounds`` (16 streams) requests back to back; the table gives aggregate tokens/s (all
tokens ÷ wall time of the phase), per-stream decode tokens/s (tokens after the
first ÷ time from first to last token) and time to first token.

    python bench/bench_gpu.py --model PATH.gguf [--llama-server BIN] [--json OUT.json] [--no-write]
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

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.load
from bench.load import Conn, Sample, chat_body, pct, stream_request, versions, write_section
from tests.utils import ControlPlaneProcess, free_port, wait_until

BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
#: A content token in an SSE chunk, whatever the JSON spacing: llama-cpp-python's server
#: writes ``"content": "x"`` (json.dumps defaults), llama.cpp's ``"content":"x"``.
_TOKEN = re.compile(rb'"content":\s?"(?!")')


class _AnyJsonParser(bench.load._Parser):
    """bench.load's parser, counting content chunks with either JSON spacing."""

    def on_body(self, data: bytes) -> None:
        if self.s.status != 200:
            self.body += data
            return
        data = self._tail + data
        cut = data.rfind(b"\n\n")
        whole, self._tail = (data[: cut + 2], data[cut + 2 :]) if cut >= 0 else (b"", data)
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
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False).stdout
        return "; ".join(line.strip() for line in out.splitlines() if line.strip()) or "no NVIDIA GPU"
    except (OSError, subprocess.SubprocessError):
        return "no NVIDIA GPU (nvidia-smi missing)"


def gpu_apps() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def start_runner(cp: ControlPlaneProcess, state: Path, args: list[str]) -> subprocess.Popen:
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUTPOST_ENROLLMENT_TOKEN": cp.enrollment_token("gpu-runner"),
           "OUTPOST_LOG_LEVEL": "warning"}
    env.pop("OUTPOST_DATABASE_URL", None)
    argv = [sys.executable, "-m", "runner.cli", "local-runner", "--control-plane", cp.url, "--state-dir", str(state),
            *args]
    log = open(state / "runner.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_llama_server(binary: str, model: str, parallel: int, ctx_per_slot: int, log_path: Path,
                       timeout: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    argv = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-ngl", "999", "-np", str(parallel),
            "-c", str(parallel * ctx_per_slot), "--alias", Path(model).name.split(".")[0].lower()]
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited: {log_path.read_text(errors='replace')[-4000:]}")
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


async def phase(host: str, port: int, path: str, body: bytes, headers: dict[str, str], streams: int,
                rounds: int) -> tuple[list[Sample], float]:
    async def one_stream() -> list[Sample]:
        conn = Conn(host, port)
        out = [await stream_request(conn, path, body, headers) for _ in range(rounds)]
        conn.close()
        return out

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream() for _ in range(streams)))
    return [s for r in results for s in r], time.perf_counter() - t0


def summarize(name: str, streams: int, samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    decode = [(s.tokens - 1) / sum(s.gaps) for s in ok if s.tokens > 1 and sum(s.gaps) > 0]
    tokens = sum(s.tokens for s in ok)
    return {"path": name, "streams": streams, "requests": len(samples), "ok": len(ok), "tokens": tokens,
            "wall_s": wall, "agg_tok_s": tokens / wall if wall else 0.0,
            "stream_tok_s": statistics.fmean(decode) if decode else float("nan"),
            "ttft_p50_ms": pct(ttft, 50) * 1000, "ttft_p95_ms": pct(ttft, 95) * 1000,
            "ttft_mean_ms": statistics.fmean(ttft) * 1000 if ttft else float("nan"),
            "errors": sorted({s.error or "" for s in samples if not s.ok})[:3]}


def render(runs: list[tuple[dict, list[dict]]]) -> str:
    """One README section: the common set-up once, then a table per engine set-up."""
    first = runs[0][0]
    lines = [
        "## GPU: llama.cpp on an NVIDIA GPU, direct vs through Outpost (`bench/bench_gpu.py`)",
        "",
        f"Card: **{first['gpu']}**. Host: {first['host']}.",
        f"Control plane (SQLite), runner and engine on loopback on the same machine; {first['versions']}.",
        (f"Workload: streaming chat completions of `{first['model_file']}`, temperature 0, max_tokens "
         f"{first['max_tokens']}; {first['rounds_single']} requests on one stream, {first['rounds']} per stream "
         f"with 16 streams, back to back, after {first['warmup']} warm-up requests. `direct` is the engine's own "
         "port; `outpost` is client → control plane → WebSocket tunnel → runner → the same engine process. "
         "Aggregate tok/s = all tokens ÷ wall time of the phase; per-stream decode tok/s = tokens after the first "
         "÷ time from first to last token, averaged over requests; TTFT = request written → first content token."),
    ]
    for meta, rows in runs:
        lines += ["", f"### {meta['title']}", "",
                  (f"Engine: {meta['engine']} ({meta['offload']}; GPU memory of the engine process: "
                   f"{meta['gpu_mem'] or 'n/a'}). Reproduce: `{meta['command']}`."), "",
                  ("| path | streams | requests ok | tokens | aggregate tok/s | per-stream decode tok/s "
                   "| TTFT p50 ms | TTFT p95 ms | TTFT mean ms |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['path']} | {r['streams']} | {r['ok']}/{r['requests']} | {r['tokens']} | "
                         f"{r['agg_tok_s']:.1f} | {r['stream_tok_s']:.1f} | {r['ttft_p50_ms']:.1f} | "
                         f"{r['ttft_p95_ms']:.1f} | {r['ttft_mean_ms']:.1f} |")
        if meta.get("notes"):
            lines += ["", *meta["notes"]]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    tmp = Path(tempfile.mkdtemp(prefix="outpost-gpu-"))
    cp = ControlPlaneProcess(tmp / "cp", f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}",
                             extra_env={"OUTPOST_LOG_LEVEL": "warning"}).start()
    runner = server = None
    try:
        key = cp.api_key("default", "gpu-bench")
        t_start = time.perf_counter()
        if args.llama_server:
            server, sport = start_llama_server(args.llama_server, args.model, args.parallel, args.ctx_per_slot,
                                               tmp / "llama-server.log", args.ready_timeout)
            runner_args = ["--attach", f"http://127.0.0.1:{sport}", "--parallel", str(args.parallel)]
        else:
            runner_args = ["--model", args.model, "--engine", args.engine, "--threads", str(args.threads)]
        runner = start_runner(cp, tmp / "runner", runner_args)

        def connected() -> bool:
            if runner.poll() is not None:
                raise RuntimeError(f"runner exited: {(tmp / 'runner' / 'runner.log').read_text()[-4000:]}")
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
        offload = re.findall(r"offloaded (\d+)/(\d+) layers to GPU", log_text)
        offload_s = (f"offloaded {offload[-1][0]}/{offload[-1][1]} layers to GPU" if offload
                     else "no 'offloaded N/N layers' line in the engine's log")
        apps = [line for line in gpu_apps().splitlines() if line.split(",")[0].strip() == str(epid)]
        gpu_mem = apps[0].split(",")[1].strip() if apps else ""
        print(f"ready in {ready_s:.1f}s; model {model}; engine pid {epid} port {eport}; {offload_s}; "
              f"GPU mem {gpu_mem}", flush=True)

        body = chat_body(model, args.max_tokens)
        auth = {"Authorization": f"Bearer {key}"}
        paths = {"direct": ("127.0.0.1", eport, {}), "outpost": ("127.0.0.1", cp.port, auth)}
        for i in range(args.warmup):  # compile/caches on both paths
            name = "direct" if i % 2 == 0 else "outpost"
            host, port, hdr = paths[name]
            s, _ = await phase(host, port, "/v1/chat/completions", body, hdr, 1, 1)
            if not s[0].ok:
                raise RuntimeError(f"warm-up on {name} failed: status {s[0].status}, {s[0].tokens} tokens, "
                                   f"{s[0].error}")
        rows = []
        for streams in (1, 16):
            for name in ("direct", "outpost"):
                host, port, hdr = paths[name]
                rounds = args.rounds_single if streams == 1 else args.rounds
                samples, wall = await phase(host, port, "/v1/chat/completions", body, hdr, streams, rounds)
                row = summarize(name, streams, samples, wall)
                print(json.dumps(row), flush=True)
                rows.append(row)
        model_file = Path(args.model).name
        if server is not None:
            title = f"llama.cpp's `llama-server`, {args.parallel} slots, attached (`--attach URL --parallel {args.parallel}`)"
            engine = (f"llama.cpp `llama-server` ({_server_version(args.llama_server)}), `-ngl 999 -np {args.parallel} "
                      f"-c {args.parallel * args.ctx_per_slot}`, started by the benchmark; the runner runs "
                      f"`local-runner --attach http://127.0.0.1:PORT --parallel {args.parallel}`")
            command = (f"python bench/bench_gpu.py --model {model_file} --llama-server BIN --parallel {args.parallel}"
                       f" --rounds {args.rounds} --rounds-single {args.rounds_single} --max-tokens {args.max_tokens}")
        else:
            title = f"{args.engine}, planned and started by the runner"
            engine = (f"llama-cpp-python {_llama_cpp_version()} server, capacity 1, planned and started by "
                      f"`runner local-runner --model {model_file} --engine {args.engine}`"
                      if args.engine == "llama-cpp-python" else args.engine)
            command = (f"python bench/bench_gpu.py --model {model_file} --rounds {args.rounds} "
                       f"--rounds-single {args.rounds_single} --max-tokens {args.max_tokens}")
        meta = {
            "title": title, "gpu": gpu_name(), "host": _host(), "engine_name": args.engine, "model_file": model_file,
            "engine": engine,
            "offload": offload_s, "gpu_mem": gpu_mem, "ready_s": ready_s,
            "versions": versions("fastapi", "uvicorn", "websockets", "pydantic", "httptools"),
            "max_tokens": args.max_tokens, "rounds": args.rounds, "rounds_single": args.rounds_single, "warmup": args.warmup,
            "command": command,
            "engine_log_tail": log_text[-3000:],
        }
        return meta, rows
    finally:
        if runner is not None and runner.poll() is None:
            runner.terminate()
            try:
                runner.wait(40)
            except subprocess.TimeoutExpired:
                runner.kill()
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        cp.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


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
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
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
    return (f"{cpu}, {os.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--engine", default="llama-cpp-python")
    parser.add_argument("--llama-server", help="llama.cpp server binary: start it and attach the runner")
    parser.add_argument("--parallel", type=int, default=16, help="llama-server slots (with --llama-server)")
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument("--render", type=Path, nargs="+", help="write one section from saved --json runs; no run")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="requests per stream with 16 streams")
    parser.add_argument("--rounds-single", type=int, default=16, help="requests with one stream")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--ready-timeout", type=float, default=300)
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
        write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
