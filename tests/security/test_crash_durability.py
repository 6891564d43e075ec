"""Durable before done (issue 20): the control plane is killed with SIGKILL under load, on SQLite
and on PostgreSQL, and every request whose client saw a complete 200 has exactly one request record
and one audit event — read straight after the kill, before anything restarts.

A crash, an OOM kill or a power cut leaves no time to drain a queue: a record (and its ``inference``
audit event) must be committed before the client gets the end of its response (``data: [DONE]`` or
the end of an unstreamed body). Real parts throughout: a ``control-plane serve`` process, a runner
with the embedded model on llama.cpp, three clients sending streamed and unstreamed requests.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from harness.processes import ControlPlaneProcess, wait_until
from tests.security.test_chaos import CLIENTS, Chaos, Outcome, _one, _rows, chaos  # noqa: F401 - the fixture

KILLS = 2


def _clients(c: Chaos, answered: threading.Event) -> list[threading.Thread]:
    def client(first: int) -> None:
        i = first
        while not c.stop.is_set():
            outcome = _one(c, i)
            c.outcomes.append(outcome)
            if outcome.kind == "ok":
                answered.set()
            i += CLIENTS
            if outcome.kind == "not_accepted":
                time.sleep(0.2)  # the control plane is down: do not spin

    return [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]


def _complete(c: Chaos, start: int, end: int) -> list[Outcome]:
    return [o for o in c.outcomes[start:end] if o.kind == "ok" and o.request_id]


@pytest.mark.timeout(600)
def test_sigkill_under_load_loses_no_answered_request(chaos: Chaos) -> None:  # noqa: F811 - the fixture
    answered = threading.Event()
    threads = _clients(chaos, answered)
    for t in threads:
        t.start()
    missing: list[str] = []
    checked = seen = 0
    try:
        for kill in range(KILLS):
            # Let a few requests complete, then kill the moment the next one is answered in full:
            # its record is the one a lingering writer still holds in memory.
            before = chaos.successes()
            wait_until(
                lambda b=before: chaos.successes() >= b + 4,
                180,
                f"requests to succeed (kill {kill + 1})",
            )
            answered.clear()
            answered.wait(60)
            assert chaos.cp.proc is not None
            chaos.cp.proc.send_signal(signal.SIGKILL)
            n = len(chaos.outcomes)  # every outcome the clients had seen when the process died
            chaos.cp.proc.wait(10)

            # Read the database before anything restarts: nothing can write what was lost.
            records, audited = _rows(chaos.database_url)
            ok = _complete(chaos, seen, n)
            checked, seen = checked + len(ok), n
            missing += [
                f"{o.request_id} (record {records[o.request_id]}, event {audited[o.request_id]})"
                for o in ok
                if records[o.request_id] != 1 or audited[o.request_id] != 1
            ]

            old = chaos.cp
            chaos.cp = ControlPlaneProcess(
                old.state_dir, old.env["OUTPOST_DATABASE_URL"], port=old.port
            ).start()
            before = chaos.successes()
            wait_until(
                lambda b=before: chaos.successes() >= b + 2,
                180,
                "requests to succeed after the restart",
            )
    finally:
        chaos.stop.set()
        for t in threads:
            t.join(180)

    assert checked >= 8, Counter(o.kind for o in chaos.outcomes)
    assert not missing, (
        f"{len(missing)} of {checked} requests answered 200 in full were lost by SIGKILL: {missing}"
    )

    # Afterwards (the survivors' records all committed before their answers ended): nothing twice.
    records, audited = _rows(chaos.database_url)
    ok = [o.request_id for o in chaos.outcomes if o.kind == "ok" and o.request_id]
    assert all(records[r] == 1 and audited[r] == 1 for r in ok), (
        "an answered request without its record"
    )
    assert max(records.values()) == 1 and max(audited.values()) == 1, "a request recorded twice"
