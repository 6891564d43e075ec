"""What bench/bench_gpu.py measures besides the client's view: CPU time per process tree, the
host's busy cores and load average, and py-spy profiles of the control plane and the runner.

CPU per token is what the relay costs on each side: the control plane's and the runner's CPU
seconds over a phase, divided by the tokens that phase delivered. The engine is left out of the
runner's tree (vLLM's API server and engine core are the runner's children), so the runner's
number is the relay's alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def _tree(pid: int, exclude: frozenset[int]) -> list[psutil.Process]:
    """The process and its descendants, without ``exclude`` and theirs."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    skip = set(exclude)
    for p in procs:
        try:
            if p.pid in exclude:
                skip.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return [p for p in procs if p.pid not in skip]


def _cpu_s(procs: Iterable[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


@dataclass
class CpuWindow:
    """CPU seconds of named process trees between ``start`` and ``stop``.

    A process of a tree that starts inside the window counts from zero; one that ends inside it
    loses what it used since ``start`` (psutil cannot read an ended process), so trees are
    re-read at ``stop`` and only processes seen at both ends are exact.
    """

    trees: dict[str, tuple[int, frozenset[int]]]
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    host_busy_cores: float = 0.0
    load_1m: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _host0: float = 0.0

    @staticmethod
    def _host_busy_s() -> float:
        t = psutil.cpu_times()
        busy: float = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return busy

    def start(self) -> None:
        self._start = {n: _cpu_s(_tree(pid, ex)) for n, (pid, ex) in self.trees.items()}
        self._host0 = self._host_busy_s()
        self.load_1m = (os.getloadavg()[0], 0.0)
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._t0
        host = self._host_busy_s() - self._host0
        self.host_busy_cores = host / self.wall_s if self.wall_s else 0.0
        self.load_1m = (self.load_1m[0], os.getloadavg()[0])
        for name, (pid, ex) in self.trees.items():
            now = _cpu_s(_tree(pid, ex))
            before = self._start.get(name, {})
            self.cpu_s[name] = sum(v - before.get(p, 0.0) for p, v in now.items())


def machine_line(gpu: str) -> str:
    """GPU, CPU model and cores, memory, kernel, load average now."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    la = os.getloadavg()
    return (
        f"GPU {gpu}; CPU {cpu}, {os.cpu_count()} logical cores; "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; Linux {os.uname().release}; "
        f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
    )


def py_spy() -> str | None:
    """py-spy's binary: on PATH, or in a ``bin/`` beside an import path (``pip --target``)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"  # a venv's bin/, not on PATH
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    for entry in sys.path:
        candidate = Path(entry or ".") / "bin" / "py-spy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def start_profiles(
    pids: dict[str, int], seconds: float, out: Path, rate: int = 100
) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    """``py-spy record --format raw`` of each process (not its children) for ``seconds``.

    ``--nonblocking``: the target is not paused per sample, so the relay runs at its own speed
    (a sample may then read a stack mid-change; at 100 Hz over seconds that noise is small)."""
    binary = py_spy()
    if binary is None:
        print("py-spy not found: no profile", flush=True)
        return []
    out.mkdir(parents=True, exist_ok=True)
    started = []
    for name, pid in pids.items():
        raw = out / f"pyspy-{name}.txt"
        log = open(out / f"pyspy-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [binary, "record", "--nonblocking", "--format", "raw", "--rate", str(rate)]
        argv += ["--duration", str(max(1, round(seconds))), "--pid", str(pid), "-o", str(raw)]
        started.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), raw))
    return started


def finish_profiles(started: list[tuple[str, subprocess.Popen[bytes], Path]]) -> dict[str, Path]:
    done = {}
    for name, proc, raw in started:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if raw.exists() and raw.stat().st_size:
            done[name] = raw
        else:
            print(f"py-spy for {name} wrote nothing (exit {proc.returncode})", flush=True)
    return done


_LINE = re.compile(r"\s*\(([^()]*?)(?::\d+)?\)$")


def _frame(frame: str) -> str:
    """``func (pkg/mod.py:123)`` → ``func (pkg/mod.py)``: one entry per function, not per line.
    py-spy already writes paths relative to their import root (``websockets/frames.py``)."""
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    return f"{frame[: m.start()].strip()} ({m.group(1)})"


#: A leaf in the event loop's own call: with uvloop the loop is C code, so a sample whose innermost
#: Python frame is ``asyncio.run`` is the loop itself (socket reads and writes, epoll, scheduling).
LOOP = "event loop, native (uvloop: socket I/O, epoll, task switching)"


def _package(frame: str) -> str:
    """The library a frame's code belongs to: ``outpost/runner/relay.py`` → ``outpost.runner``,
    ``websockets/frames.py`` → ``websockets``, ``asyncio/queues.py`` → ``asyncio``."""
    if frame.startswith(("Runner.run (asyncio/runners.py)", "run (asyncio/runners.py)")):
        return LOOP
    m = re.search(r"\(([^()]*)\)$", frame)
    where = m.group(1) if m else ""
    parts = where.split("/")
    if parts[0] == "outpost" and len(parts) > 2:
        return f"outpost.{parts[1]}"
    return parts[0].removesuffix(".py") if parts[0] else "?"


@dataclass
class Profile:
    samples: int
    self_counts: Counter[str]
    inclusive: Counter[str]

    def by_package(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for frame, n in self.self_counts.items():
            out[_package(frame)] += n
        return out


def read_raw(path: Path) -> Profile:
    """py-spy's raw (collapsed) format: ``frame;frame;...;leaf COUNT`` per line, root first."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return Profile(total, self_counts, inclusive)


def summarize(path: Path, us_per_token: float, top: int = 15) -> str:
    """The top frames by own time and by inclusive time, each as a share of the process's samples
    and as µs per token (share × the process's measured CPU µs per token)."""
    prof = read_raw(path)
    if not prof.samples:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {prof.samples} samples; CPU {us_per_token:.1f} µs/token over the phase"]
    lines.append("  own time by package:")
    for package, n in prof.by_package().most_common(12):
        share = n / prof.samples
        lines.append(f"    {share * 100:5.1f} %  {share * us_per_token:7.1f} µs/tok  {package}")
    for title, counts in (("self", prof.self_counts), ("inclusive", prof.inclusive)):
        lines.append(f"  top {top} by {title} time:")
        # Inclusive: frames under nearly every sample (the CLI, uvicorn, the event loop's
        # run_forever) say nothing about where the relay's time goes.
        ranked = [
            (f, n) for f, n in counts.most_common() if title == "self" or n / prof.samples <= 0.97
        ][:top]
        for frame, n in ranked:
            share = n / prof.samples
            lines.append(f"    {share * 100:5.1f} %  {share * us_per_token:7.1f} µs/tok  {frame}")
    return "\n".join(lines)


def main() -> None:
    """``python -m harness.gpu_measure RAW US_PER_TOKEN [TOP]``: summarise a saved profile."""
    path, us = Path(sys.argv[1]), float(sys.argv[2])
    print(summarize(path, us, int(sys.argv[3]) if len(sys.argv) > 3 else 15))


if __name__ == "__main__":
    main()
