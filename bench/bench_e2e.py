"""Benchmark the end-to-end encryption building blocks (sdk.e2e).

Measures, per operation, the client and runner CPU cost that e2e mode adds:
sealing and opening one request (HPKE, each KEM), sealing and opening one
response chunk (ChaCha20-Poly1305) at a few sizes, and receipts. Each
iteration is timed on its own with time.perf_counter so p50/p99 are real.

    .venv/bin/python bench/bench_e2e.py [--iterations N] [--no-write]

The markdown table is printed and written between the e2e markers in
bench/README.md (only that section is touched).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cryptography
from _repo import ROOT
from cryptography.hazmat.backends.openssl.backend import backend

from bench.load import cpu_model
from outpost.sdk.e2e import (
    ChunkOpener,
    ChunkSealer,
    Kem,
    ReplayGuard,
    ResponseKey,
    RunnerKeys,
    open_request,
    seal_request,
    sign_receipt,
    verify_receipt,
)

README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"
RUNNER, REQUEST = "bench-runner", "bench-request"


def timed(op: Callable[[], object], n: int) -> list[float]:
    """Per-call durations in microseconds, after a short warm-up."""
    for _ in range(min(50, n)):
        op()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        op()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def timed_each(ops: Iterator[Callable[[], object]]) -> list[float]:
    out = []
    for op in ops:
        t0 = time.perf_counter()
        op()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def row(op: str, variant: str, size: str, us: list[float]) -> str:
    us = sorted(us)
    p50 = statistics.median(us)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    mean = statistics.fmean(us)
    stats = f"{len(us)} | {mean:.1f} | {p50:.1f} | {p99:.1f} | {1e6 / mean:,.0f}"
    return f"| {op} | {variant} | {size} | {stats} |"


def bench_requests(n: int, body_size: int) -> Iterator[str]:
    body = os.urandom(body_size)
    for kem in Kem:
        keys = RunnerKeys.generate(kem)
        pub = keys.hpke_public

        def seal(pub=pub) -> tuple[str, ResponseKey]:
            return seal_request(pub, RUNNER, body, REQUEST)

        size = f"{body_size} B body"
        yield row("seal_request (client)", kem.value, size, timed(seal, n))
        guard = ReplayGuard(max_entries=n + 1)

        def opens(keys=keys, seal=seal, guard=guard) -> Iterator[Callable[[], object]]:
            # Each envelope is sealed outside the timed region (a fresh one per
            # open, as the replay guard requires) and not kept afterwards.
            for _ in range(n):
                env = seal()[0]
                yield lambda env=env: open_request(keys, env, REQUEST, guard, runner_id=RUNNER)

        yield row("open_request (runner)", kem.value, size, timed_each(opens()))


def bench_chunks(n: int, size: int, pad_to: int) -> Iterator[str]:
    key = ResponseKey.generate()
    data = os.urandom(size)
    label = f"{size} B" + (f", pad_to {pad_to}" if pad_to else "")
    sealer = ChunkSealer(key, REQUEST, pad_to=pad_to)
    yield row(
        "ChunkSealer.seal (runner)", "ChaCha20-Poly1305", label, timed(lambda: sealer.seal(data), n)
    )
    sealer = ChunkSealer(key, REQUEST, pad_to=pad_to)
    opener = ChunkOpener(key, REQUEST)
    chunks = (sealer.seal(data) for _ in range(n))
    opens = ((lambda c=c: opener.open(c)) for c in chunks)
    yield row("ChunkOpener.open (client)", "ChaCha20-Poly1305", label, timed_each(opens))


def bench_receipts(n: int) -> Iterator[str]:
    keys = RunnerKeys.generate()
    fields = {
        "request_id": REQUEST,
        "runner_id": RUNNER,
        "prompt_tokens": 512,
        "completion_tokens": 128,
        "started_at": time.time(),
        "finished_at": time.time() + 2.0,
    }
    yield row(
        "sign_receipt (runner)",
        "Ed25519",
        "-",
        timed(lambda: sign_receipt(keys.identity, fields), n),
    )
    receipt = sign_receipt(keys.identity, fields)
    pub = keys.identity_public
    yield row(
        "verify_receipt (control plane)",
        "Ed25519",
        "-",
        timed(lambda: verify_receipt(pub, receipt, REQUEST), n),
    )


def machine() -> str:
    model = cpu_model()
    return (
        f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, cryptography {cryptography.__version__} "
        f"({backend.openssl_version_text()})"
    )


def table(n_requests: int, n_chunks: int) -> str:
    lines = [
        "## End-to-end encryption (`bench/bench_e2e.py`)",
        "",
        f"Machine: {machine()}. Single thread; one call per timed iteration.",
        "Reproduce: `.venv/bin/python bench/bench_e2e.py [--iterations N]`.",
        "",
        "| operation | algorithm | payload | n | mean µs | p50 µs | p99 µs | ops/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for body_size in (1024, 64 * 1024):
        lines += bench_requests(n_requests, body_size)
    for size, pad_to in ((64, 0), (64, 256), (1024, 0)):
        lines += bench_chunks(n_chunks, size, pad_to)
    lines += bench_receipts(n_requests)
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = README) -> None:
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n{text}{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        updated = head + section + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="per request operation")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    text = table(args.iterations, args.iterations * 10)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"written to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
