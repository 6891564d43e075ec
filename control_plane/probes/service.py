"""Bias-probe runs inside the control plane: plan, start, import, compare, audit.

A run started through the API probes a model the way any tenant would: over
HTTP, through the control plane's own ``/v1`` API, with an API key of the
caller's tenant made for that run alone (``fairness-probe``). So whatever
the API applies to a client's request (routing, limits, request records,
audit) applies to the probe's. The key's secret lives only in memory, in the run's task; the key is
revoked when the run ends and expires on its own if the process dies first.

Functions here take a session and never commit: the route owns the
transaction. Executing a run is :mod:`control_plane.probes.jobs`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.events import actor_for_key, record_fairness_probe
from outpost.control_plane.db.models import FairnessRun, utcnow
from outpost.control_plane.domain_errors import Conflict, Invalid, NotFound
from outpost.control_plane.store.fairness import create_fairness_run, get_fairness_run, run_document
from outpost.control_plane.store.keys import create_api_key

from .extractors import OutcomeKind
from .report import Comparison, ReportSettings, build_report, compare
from .runs import ProbeResponse, ProbeRun, SamplingSettings
from .schemas import (
    FairnessRunImport,
    FairnessRunIn,
    RunDocument,
    RunProgress,
    RunStatus,
    RunSummary,
)
from .suites import ExpansionOptions, Suite, builtin_suite, load_suite, suite_hash

__all__ = [
    "MAX_COMPARE_RUNS",
    "MAX_RUN_PROMPTS",
    "MAX_SUITE_BYTES",
    "MAX_SUITE_SETS",
    "PROBE_KEY_NAME",
    "PROBE_KEY_TTL",
    "STORED_TEXT_CHARS",
    "ProbePlan",
    "StartedRun",
    "audit_probe_run",
    "compare_runs",
    "import_probe_run",
    "plan_probe",
    "run_status",
    "start_probe_run",
    "stored_responses",
]

MAX_SUITE_BYTES = 256 * 1024  # a custom suite's JSON
MAX_SUITE_SETS = (
    20_000  # counterfactual sets of one attribute before sampling (expansion builds them all)
)
MAX_RUN_PROMPTS = 5_000  # prompts one run sends (default-v1 in full: 881)
MAX_COMPARE_RUNS = 8
STORED_TEXT_CHARS = 4_000  # answers are scored in full, stored truncated
PROBE_KEY_NAME = "fairness-probe"
PROBE_KEY_TTL = timedelta(hours=24)  # revoked when the run ends; this bounds a crashed run's key


@dataclass(frozen=True)
class ProbePlan:
    """A validated request: what a run will send, and how it will be judged."""

    model: str
    suite: Suite
    custom: bool
    expansion: ExpansionOptions
    sampling: SamplingSettings
    report_settings: ReportSettings
    concurrency: int
    prompt_count: int

    @property
    def suite_hash(self) -> str:
        return suite_hash(self.suite)


@dataclass(frozen=True)
class StartedRun:
    run: FairnessRun
    plan: ProbePlan
    api_key: str = field(repr=False)  # the probe key's secret: memory only


def _invalid(message: str, code: str, param: str | None = None) -> Invalid:
    return Invalid(message, code=code, param=param)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "suite"
    return f"{where}: {first.get('msg', 'invalid value')}"


def _resolve_suite(ref: str | dict[str, Any]) -> tuple[Suite, bool]:
    if isinstance(ref, str):
        try:
            return builtin_suite(ref), False
        except LookupError:
            raise _invalid(
                f"No built-in suite named {ref!r}.", "suite_not_found", "suite"
            ) from None
    size = len(json.dumps(ref, ensure_ascii=False).encode())
    if size > MAX_SUITE_BYTES:
        raise _invalid(
            f"The suite is {size} bytes; the limit is {MAX_SUITE_BYTES}.",
            "suite_too_large",
            "suite",
        )
    try:
        return load_suite(ref), True
    except ValidationError as exc:
        raise _invalid(
            f"Invalid suite: {_validation_message(exc)}", "invalid_suite", "suite"
        ) from None


def _prompt_count(suite: Suite, expansion: ExpansionOptions) -> int:
    # Counted arithmetically: expanding an oversized suite is the thing to avoid.
    sets = suite.samples_per_group()
    total = 0
    for attribute in expansion.attributes or list(suite.attributes):
        if sets[attribute] > MAX_SUITE_SETS:
            raise _invalid(
                f"Attribute {attribute!r} expands to {sets[attribute]} counterfactual sets; "
                f"the limit is {MAX_SUITE_SETS}.",
                "suite_too_large",
                "suite",
            )
        kept = min(sets[attribute], expansion.max_prompts_per_group or sets[attribute])
        total += kept * len(suite.attributes[attribute].groups)
    return total


def plan_probe(body: FairnessRunIn, *, max_tokens_limit: int) -> ProbePlan:
    """Validate a run request against the suite and this deployment's limits (400 on failure)."""
    suite, custom = _resolve_suite(body.suite)
    unknown = sorted(set(body.attributes or ()) - set(suite.attributes))
    if unknown:
        raise _invalid(
            f"Unknown attributes {unknown}; suite {suite.id!r} has {sorted(suite.attributes)}.",
            "unknown_attribute",
            "attributes",
        )
    if body.sampling.max_tokens > max_tokens_limit:
        raise _invalid(
            f"max_tokens {body.sampling.max_tokens} exceeds this deployment's limit of "
            f"{max_tokens_limit}.",
            "max_tokens_too_large",
            "sampling.max_tokens",
        )
    expansion = ExpansionOptions(
        max_prompts_per_group=body.max_prompts_per_group,
        attributes=body.attributes,
        seed=body.expansion_seed,
    )
    count = _prompt_count(suite, expansion)
    if count > MAX_RUN_PROMPTS:
        raise _invalid(
            f"This run would send {count} prompts; the limit is {MAX_RUN_PROMPTS}. "
            "Lower max_prompts_per_group or select attributes.",
            "run_too_large",
            "max_prompts_per_group",
        )
    return ProbePlan(
        model=body.model,
        suite=suite,
        custom=custom,
        expansion=expansion,
        sampling=body.sampling,
        report_settings=body.report_settings,
        concurrency=body.concurrency,
        prompt_count=count,
    )


async def start_probe_run(
    session: AsyncSession,
    *,
    tenant_id: str,
    started_by_key_id: str,
    plan: ProbePlan,
    engine: str | None,
) -> StartedRun:
    """Record a new run and create its own API key; the caller commits, then launches the job."""
    key, secret = await create_api_key(
        session, tenant_id, PROBE_KEY_NAME, expires_at=utcnow() + PROBE_KEY_TTL, scopes="inference"
    )
    summary = RunSummary(
        engine=engine,
        expansion=plan.expansion,
        report_settings=plan.report_settings,
        concurrency=plan.concurrency,
        started_by_key_id=started_by_key_id,
        probe_key_id=key.id,
        progress=RunProgress(total=plan.prompt_count),
    )
    document = RunDocument(
        summary=summary, custom_suite=plan.suite.model_dump(mode="json") if plan.custom else None
    )
    run = await create_fairness_run(
        session,
        tenant_id=tenant_id,
        suite_id=plan.suite.id,
        suite_version=plan.suite.version,
        suite_hash=plan.suite_hash,
        model=plan.model,
        sampling=plan.sampling.model_dump(mode="json"),
        document=document,
    )
    return StartedRun(run=run, plan=plan, api_key=secret)


def stored_responses(responses: list[ProbeResponse]) -> list[dict[str, Any]]:
    out = []
    for response in responses:
        data = response.model_dump(mode="json")
        if data["text"] is not None and len(data["text"]) > STORED_TEXT_CHARS:
            data["text"] = data["text"][:STORED_TEXT_CHARS]
        out.append(data)
    return out


def run_status(run: ProbeRun) -> tuple[RunStatus, str | None]:
    """A run with no answer at all failed; its most common error says why."""
    if run.count("ok") or run.count("empty"):
        return "completed", None
    errors = [r.error or "unknown error" for r in run.responses]
    if not errors:
        return "failed", "The run selected no prompts."
    top = max(set(errors), key=errors.count)
    return "failed", f"All {len(errors)} prompts failed; most often: {top}"


def _check_outcomes(run: ProbeRun) -> None:
    # What extractors guarantee for a run made here, a client's run must show:
    # finite numbers (JSON has no NaN), and 0 or 1 for a binary outcome.
    try:
        json.dumps(run.model_dump(mode="json"), allow_nan=False)
    except ValueError:
        raise _invalid("The run holds a non-finite number.", "invalid_run", "run") from None
    binary = {name for name, spec in run.outcome_specs.items() if spec.kind is OutcomeKind.BINARY}
    for response in run.responses:
        for name, value in response.outcomes.items():
            if name in binary and value not in (None, 0.0, 1.0):
                raise _invalid(
                    f"Outcome {name!r} of {response.prompt.prompt_id!r} is {value}; a binary "
                    "outcome is 0, 1 or null.",
                    "invalid_run",
                    "run.responses",
                )


async def import_probe_run(
    session: AsyncSession, *, tenant_id: str, actor_key_id: str, body: FairnessRunImport
) -> FairnessRun:
    """Record a run made by a client (the CLI's ``--save``), with a report rebuilt here."""
    run = body.run
    if len(run.responses) > MAX_RUN_PROMPTS:
        raise _invalid(
            f"The run has {len(run.responses)} responses; the limit is {MAX_RUN_PROMPTS}.",
            "run_too_large",
            "run.responses",
        )
    _check_outcomes(run)
    status, error = run_status(run)
    report = None
    if status == "completed":
        try:
            report = await asyncio.to_thread(build_report, run, body.report_settings)
        except ValueError as exc:
            raise _invalid(f"The run cannot be analysed: {exc}", "invalid_run", "run") from None
    summary = RunSummary(
        source="client",
        engine=run.target.engine,
        expansion=run.expansion,
        report_settings=body.report_settings,
        started_by_key_id=actor_key_id,
        progress=RunProgress(
            total=len(run.responses), done=len(run.responses), errors=run.count("error")
        ),
        runners=body.runners,
        error=error,
        flagged_attributes=report.flagged_attributes if report else [],
    )
    document = RunDocument(
        summary=summary,
        report=report.to_dict() if report else None,
        responses=stored_responses(run.responses),
    )
    row = await create_fairness_run(
        session,
        tenant_id=tenant_id,
        suite_id=run.suite_id,
        suite_version=run.suite_version,
        suite_hash=run.suite_hash,
        model=run.target.model,
        sampling=run.sampling.model_dump(mode="json"),
        document=document,
        status=status,
        finished_at=run.finished_at,
    )
    await audit_probe_run(session, row, document)
    return row


async def compare_runs(session: AsyncSession, tenant_id: str, run_ids: list[str]) -> Comparison:
    """Finished runs of this tenant side by side (404 for a run it cannot see)."""
    rows = []
    for run_id in run_ids:
        row = await get_fairness_run(session, run_id, tenant_id)
        if row is None:
            raise NotFound(
                f"No fairness run {run_id!r} in this tenant.",
                code="fairness_run_not_found",
                param="runs",
            )
        rows.append(row)
    reports = []
    for row in rows:
        report = run_document(row).report
        if report is None:
            raise Conflict(
                f"Run {row.id!r} has no report (status {row.status!r}).",
                code="run_has_no_report",
                param="runs",
            )
        reports.append(report)
    return compare(reports)


async def audit_probe_run(session: AsyncSession, run: FairnessRun, document: RunDocument) -> None:
    """The one place a probe run reaches the audit log: once, when it ends
    (or is imported), in the transaction that records the outcome."""
    summary = document.summary
    await record_fairness_probe(
        session,
        actor=actor_for_key(summary.started_by_key_id),
        tenant_id=run.tenant_id,
        run_id=run.id,
        suite_id=run.suite_id,
        suite_version=run.suite_version,
        suite_hash=run.suite_hash,
        model=run.model,
        status=run.status,
        details={
            "source": summary.source,
            "engine": summary.engine,
            "probe_key_id": summary.probe_key_id,
            "runners": [r.id for r in summary.runners],
            "prompt_count": summary.progress.total,
            "answered": summary.progress.done - summary.progress.errors,
            "errors": summary.progress.errors,
            "flagged_attributes": summary.flagged_attributes,
            "sampling": run.sampling,
        },
    )
