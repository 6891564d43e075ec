"""Links that flap: control plane and runner in their own network namespaces, steady load, a
partition.

Every client request must end in an answer or a clear error (an OpenAI error
envelope), every answer must be recorded exactly once, and the runner must be
back within a bound once the partition heals. The longer soak with a partition
every minute is bench/bench_flapping.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.flapping import RECONNECT_BOUND_S, Load, NsControlPlane, NsRunner, connected
from harness.netns import FaultProxy, Namespace, netns_unavailable
from harness.processes import tenant_records, wait_until


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[Namespace, Namespace]]:
    if (reason := netns_unavailable()) is not None:
        pytest.skip(reason)
    cp_ns, runner_ns = Namespace(subnet=231).create(), Namespace(subnet=232).create()
    try:
        yield cp_ns, runner_ns
    finally:
        cp_ns.destroy()
        runner_ns.destroy()


def test_requests_survive_a_partition_and_the_runner_comes_back(
    tmp_path: Path, topology: tuple[Namespace, Namespace]
) -> None:
    cp_ns, runner_ns = topology
    cp = NsControlPlane(cp_ns, tmp_path).start()
    # The runner's only way out: the root namespace's fault proxy, 50 ms +-25 ms each way, 2 %
    # stalls.
    proxy = FaultProxy(
        runner_ns.host_ip, (cp_ns.ip, cp.port), delay_s=0.05, jitter_s=0.05, loss=0.02
    ).start()
    runner = NsRunner(runner_ns, cp, tmp_path, f"http://{runner_ns.host_ip}:{proxy.port}")
    load = Load(cp.url, "")
    threads: list[threading.Thread] = []
    try:
        load.key = cp.api_key()
        runner.start()
        runner_id = runner.wait_connected(load.key)
        threads = [threading.Thread(target=load.worker, args=(n,), daemon=True) for n in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(load.answered) >= 3, 60, "answers before the partition")
        before = len(load.answered)

        runner_ns.partition()
        wait_until(
            lambda: not connected(cp, load.key, runner_id),
            20,
            "the control plane to drop the runner",
        )
        time.sleep(3)  # the runner's redials meet the dead link too
        runner_ns.heal()
        healed = time.monotonic()
        wait_until(
            lambda: connected(cp, load.key, runner_id),
            RECONNECT_BOUND_S,
            "the runner to come back",
        )
        back_s = time.monotonic() - healed
        answered_at_heal = len(load.answered)
        wait_until(
            lambda: len(load.answered) >= answered_at_heal + 3, 60, "answers after the partition"
        )
    finally:
        load.stop.set()
        for t in threads:
            t.join(90)
        runner.stop(timeout=15)
        proxy.close()
    try:
        assert not any(t.is_alive() for t in threads), "a client request never ended"
        assert load.unclear == [], load.unclear
        assert before >= 3 and len(load.answered) >= answered_at_heal + 3
        assert all(status in (429, 502, 503, 504) for status, _ in load.errors), load.errors
        # Nothing answered is lost or duplicated: one ok record per answer, and no ok record
        # unanswered.
        answered = set(load.answered)
        assert len(answered) == len(load.answered)

        def ok_ids() -> list[str]:
            return [
                r["id"] for r in tenant_records(cp.database_url, "default") if r["status"] == "ok"
            ]

        wait_until(lambda: set(ok_ids()) >= answered, 15, "the answers' request records")
        assert sorted(ok_ids()) == sorted(answered)
        print(
            f"\nanswered {len(answered)}, clear errors {len(load.errors)} "
            f"{sorted(set(load.errors))}, "
            f"runner back {back_s:.1f}s after the heal, proxy stalls {proxy.stalls}"
        )
    finally:
        cp.stop()
