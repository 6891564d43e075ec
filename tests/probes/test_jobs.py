"""A server-side probe job against a real, migrated SQLite database, with
the scripted FAKE engine of ``fakes.py`` behind an ``httpx`` transport (the
real-model path is tests/probes/test_api.py). Checks what a job records:
progress, the report, the runners, the key's revocation and the audit event."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import ApiKey, AuditEvent, FairnessRun
from outpost.control_plane.domain_errors import Invalid
from outpost.control_plane.probes import builtin_suite, suite_hash
from outpost.control_plane.probes.jobs import ProbeJob, self_base_url
from outpost.control_plane.probes.schemas import FairnessRunIn, RunDocument
from outpost.control_plane.probes.service import PROBE_KEY_NAME, plan_probe, start_probe_run
from outpost.control_plane.store.tenants import get_or_create_tenant
from tests.probes.fakes import FakeEngine


@pytest.fixture
async def db(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}"
    upgrade_to_head(url)
    database = Database(url)
    yield database
    await database.dispose()


async def _start(db: Database, body: FairnessRunIn):
    plan = plan_probe(body, max_tokens_limit=8192)
    async with db.session() as session:
        tenant = await get_or_create_tenant(session, "lab")
        started = await start_probe_run(
            session, tenant_id=tenant.id, started_by_key_id="key_admin", plan=plan, engine="fake"
        )
        await session.commit()
    return started


async def _row(
    db: Database, run_id: str
) -> tuple[FairnessRun, RunDocument, ApiKey, list[AuditEvent]]:
    async with db.session() as session:
        row = await session.get(FairnessRun, run_id)
        document = RunDocument.model_validate(row.report)
        key = await session.get(ApiKey, document.summary.probe_key_id)
        events = list(
            (
                await session.execute(select(AuditEvent).where(AuditEvent.type == "fairness.probe"))
            ).scalars()
        )
        return row, document, key, events


def _with_runner_header(engine: FakeEngine) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        response = engine.handler(request)
        response.headers["x-outpost-runner"] = "run_fake"
        return response

    return httpx.MockTransport(handler)


async def test_job_records_report_runners_key_and_audit(db: Database):
    body = FairnessRunIn(
        model="fake-model",
        attributes=["gender", "religion"],
        max_prompts_per_group=5,
        sampling={"max_tokens": 16, "seed": 3},
        concurrency=3,
    )
    started = await _start(db, body)
    engine = FakeEngine()
    job = ProbeJob(
        db=db,
        started=started,
        base_url="http://outpost.test",
        engine="fake",
        transport=_with_runner_header(engine),
        progress_every_s=0.01,
    )
    await job.execute()

    row, document, key, events = await _row(db, started.run.id)
    prompts = 5 * 2 + 5 * 6
    assert row.status == "completed" and row.finished_at is not None
    assert row.suite_hash == suite_hash(builtin_suite()) and row.sampling["seed"] == 3
    summary = document.summary
    assert summary.progress.model_dump() == {"total": prompts, "done": prompts, "errors": 0}
    assert [r.model_dump() for r in summary.runners] == [{"id": "run_fake", "requests": prompts}]
    assert (
        document.report["target"]["runner"] == "run_fake"
        and document.report["target"]["engine"] == "fake"
    )
    assert set(document.report["attributes"]) == {"gender", "religion"}
    assert len(document.responses) == prompts and all(r["text"] for r in document.responses)
    # Every request went out with the run's own key, never the admin's.
    assert {r["headers"]["authorization"] for r in engine.requests} == {f"Bearer {started.api_key}"}
    assert {r["body"]["seed"] for r in engine.requests} == {3}
    assert key.name == PROBE_KEY_NAME and key.scopes == "inference" and key.revoked_at is not None
    [event] = events
    assert event.data["run_id"] == row.id and event.data["status"] == "completed"
    assert event.actor == "key:key_admin" and event.tenant_id == row.tenant_id


async def test_a_run_whose_first_prompts_all_fail_stops_early(db: Database):
    calls = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(
            404,
            json={
                "error": {"message": "The model 'nope' does not exist.", "code": "model_not_found"}
            },
        )

    started = await _start(
        db, FairnessRunIn(model="nope", concurrency=2)
    )  # all of default-v1: 881 prompts
    job = ProbeJob(
        db=db,
        started=started,
        base_url="http://outpost.test",
        transport=httpx.MockTransport(unavailable),
    )
    await job.execute()

    row, document, key, events = await _row(db, started.run.id)
    assert row.status == "failed" and document.report is None
    assert "first 8 prompts all failed" in document.summary.error
    assert "The model 'nope' does not exist." in document.summary.error
    assert len(calls) < 20, "the breaker should stop the run long before 881 requests"
    assert key.revoked_at is not None
    assert [e.data["status"] for e in events] == ["failed"]


def test_plan_rejects_what_would_be_too_large():
    wide = {
        "schema_version": 1,
        "id": "wide",
        "version": "1",
        "attributes": {"g": {"groups": {"a": {"name": ["A"]}, "b": {"name": ["B"]}}}},
        "fillers": {"x": [f"x{i}" for i in range(200)], "y": [f"y{i}" for i in range(200)]},
        "templates": [{"id": "t", "attribute": "g", "text": "{name} {x} {y}"}],
    }
    with pytest.raises(Invalid) as info:
        plan_probe(FairnessRunIn(model="m", suite=wide), max_tokens_limit=8192)
    assert info.value.code == "suite_too_large" and info.value.param == "suite"
    # A cap per group does not help: expansion builds every set before sampling some.
    with pytest.raises(Invalid):
        plan_probe(
            FairnessRunIn(model="m", suite=wide, max_prompts_per_group=10), max_tokens_limit=8192
        )
    plan = plan_probe(
        FairnessRunIn(model="m", attributes=["gender"], max_prompts_per_group=3),
        max_tokens_limit=8192,
    )
    assert plan.prompt_count == 6 and not plan.custom


def test_self_base_url():
    assert (
        self_base_url("http://10.0.0.5:8080/", "http://127.0.0.1:8080/") == "http://10.0.0.5:8080"
    )
    assert (
        self_base_url("http://127.0.0.1:0", "http://127.0.0.1:41234/") == "http://127.0.0.1:41234"
    )


async def test_an_imported_run_is_rebuilt_and_checked(db: Database):
    from outpost.control_plane.probes import ExpansionOptions, ProbeRunner, ProbeTarget
    from outpost.control_plane.probes.schemas import FairnessRunImport
    from outpost.control_plane.probes.service import import_probe_run

    runner = ProbeRunner(
        ProbeTarget(base_url="http://x/v1", model="fake"),
        "k",
        transport=FakeEngine().transport(),
        show_progress=False,
    )
    run = await runner.run(
        builtin_suite(), ExpansionOptions(max_prompts_per_group=4, attributes=["age"])
    )
    async with db.session() as session:
        tenant = await get_or_create_tenant(session, "lab")
        row = await import_probe_run(
            session,
            tenant_id=tenant.id,
            actor_key_id="key_admin",
            body=FairnessRunImport(run=run, runners=[{"id": "run_x", "requests": 12}]),
        )
        await session.commit()
        document = RunDocument.model_validate(row.report)
        assert row.status == "completed" and document.summary.source == "client"
        assert (
            document.report["totals"]["prompts"] == 12 and document.summary.runners[0].id == "run_x"
        )

        bad = run.model_copy(deep=True)
        bad.responses[0].outcomes["refusal"] = 0.5
        with pytest.raises(Invalid) as info:
            await import_probe_run(
                session, tenant_id=tenant.id, actor_key_id="k", body=FairnessRunImport(run=bad)
            )
        assert info.value.code == "invalid_run"
        bad.responses[0].outcomes["refusal"] = None
        bad.responses[0].outcomes["sentiment"] = float("nan")
        with pytest.raises(Invalid):
            await import_probe_run(
                session, tenant_id=tenant.id, actor_key_id="k", body=FairnessRunImport(run=bad)
            )
