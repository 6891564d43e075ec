"""Real processes and real databases for the tests and the benchmarks (not in the wheel).

tests/ and bench/ both import from here and never from each other (pyproject.toml's
import contracts): ``processes`` (a control plane and runners on free ports), ``stack``
(an engine and the stack in front of it), ``databases`` (fresh SQLite / PostgreSQL
databases, Redis), ``sim`` (simulated runners for routing), ``netns`` and ``flapping``
(network namespaces and a fault-injecting proxy), ``gpu_measure`` (CPU per process tree and
py-spy summaries for bench/bench_gpu.py).
"""
