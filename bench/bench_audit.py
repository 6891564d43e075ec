"""What audit completeness (issue 20) costs: the tenant counter upsert under the head lock, and the
checkpointer's re-verification of every event it follows.

Prints a table; it writes no README section (bench/run.py does not run it).

    .venv/bin/python bench/bench_audit.py [--repeat N] [--events N]

Needs the test PostgreSQL on 127.0.0.1:5432 (trust auth) for the postgres rows.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import _repo  # noqa: F401 (puts the checkout on sys.path)
import psycopg

from outpost.control_plane.audit.chain import EventSpec, _number_tenants, append_events, read_head
from outpost.control_plane.audit.guard import ChainGuard, Point
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.sdk.audit import GENESIS_HASH

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def measure(url: str, repeat: int, events: int) -> tuple[float, float, float, float]:
    """(upsert ms wall, upsert ms CPU, re-verify us wall, re-verify us CPU per event)."""
    upgrade_to_head(url)
    db = Database(url)
    try:
        batch = [EventSpec("inference", "key:k", f"ten_{j % 4}", {"j": j}) for j in range(16)]
        for _ in range(events // len(batch)):
            async with db.session() as session:
                await append_events(session, batch)
                await session.commit()
        async with db.session() as session:  # the statement alone, in one transaction (rolled back)
            for _ in range(20):
                await _number_tenants(session, batch)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeat):
                await _number_tenants(session, batch)
            upsert = (
                (time.perf_counter() - t0) / repeat * 1e3,
                (time.process_time() - c0) / repeat * 1e3,
            )
            await session.rollback()
        async with db.session() as session:
            head = await read_head(session)
            guard = ChainGuard()
            guard.point = Point(0, GENESIS_HASH)
            t0, c0 = time.perf_counter(), time.process_time()
            await guard.verify(session, head)
            verify = (
                (time.perf_counter() - t0) / head.seq * 1e6,
                (time.process_time() - c0) / head.seq * 1e6,
            )
        return (*upsert, *verify)
    finally:
        await db.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--events", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(
            (
                "sqlite",
                await measure(
                    f"sqlite+aiosqlite:///{Path(tmp) / 'a.db'}", args.repeat, args.events
                ),
            )
        )
    name = "bench_audit_" + uuid.uuid4().hex[:8]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        rows.append(
            (
                "postgres",
                await measure(
                    f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", args.repeat, args.events
                ),
            )
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    print("| backend | tenant upsert per append tx (16 events, 4 tenants) | re-verify per event |")
    print("|---|---:|---:|")
    for backend, (uw, uc, vw, vc) in rows:
        print(
            f"| {backend} | {uw:.2f} ms wall, {uc:.2f} ms CPU | {vw:.1f} µs wall, {vc:.1f} µs CPU |"
        )


if __name__ == "__main__":
    asyncio.run(main())
