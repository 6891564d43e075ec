"""Wire schemas of the fairness API (``/api/fairness``) and the layout of a
stored run.

``FairnessRun`` has fixed columns (suite identity, model, sampling, status,
timestamps) and one JSON column, ``report``, whose layout is
:class:`RunDocument`: a small ``summary`` (read by list queries on its own),
the report, and the scored responses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .report import ReportSettings
from .runs import ProbeRun, SamplingSettings
from .suites import ExpansionOptions, Identifier

__all__ = [
    "MAX_ATTRIBUTES",
    "FairnessRunDetail",
    "FairnessRunImport",
    "FairnessRunIn",
    "FairnessRunOut",
    "RunDocument",
    "RunProgress",
    "RunStatus",
    "RunSummary",
    "RunnerUse",
]

MAX_ATTRIBUTES = 64
RunStatus = Literal["running", "completed", "failed", "cancelled"]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
SuiteName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FairnessRunIn(_In):
    """Start a probe run. ``suite`` is a built-in suite's id or a whole
    custom suite (docs/fairness.md, "Custom suites"), validated strictly."""

    model: ModelName
    suite: SuiteName | dict[str, Any] = "default-v1"
    max_prompts_per_group: Annotated[int, Field(ge=1, le=1000)] | None = None
    attributes: (
        Annotated[list[Identifier], Field(min_length=1, max_length=MAX_ATTRIBUTES)] | None
    ) = None
    expansion_seed: int = 0
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    report_settings: ReportSettings = Field(default_factory=ReportSettings)
    concurrency: Annotated[int, Field(ge=1, le=32)] = 4


class RunnerUse(_In):
    """A runner that answered some of a run's prompts (``x-outpost-runner``)."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    requests: Annotated[int, Field(ge=0, le=2**31 - 1)]


class FairnessRunImport(_In):
    """A run made elsewhere (``control-plane fairness run --save``). The
    server rebuilds the report from the responses; it never trusts one."""

    run: ProbeRun
    runners: Annotated[list[RunnerUse], Field(max_length=64)] = []
    report_settings: ReportSettings = Field(default_factory=ReportSettings)


class RunProgress(BaseModel):
    total: int
    done: int = 0
    errors: int = 0


class RunSummary(BaseModel):
    """The small part of a stored run: enough to list runs without loading reports."""

    source: Literal["server", "client"] = "server"
    engine: str | None = None
    expansion: ExpansionOptions
    report_settings: ReportSettings
    concurrency: int | None = None
    started_by_key_id: str | None = None
    probe_key_id: str | None = None
    progress: RunProgress
    runners: list[RunnerUse] = Field(default_factory=list)
    error: str | None = None
    flagged_attributes: list[str] = Field(default_factory=list)


class RunDocument(BaseModel):
    """What ``fairness_runs.report`` holds."""

    summary: RunSummary
    report: dict[str, Any] | None = None  # FairnessReport.to_dict()
    custom_suite: dict[str, Any] | None = None  # kept so a custom run can be repeated
    responses: list[dict[str, Any]] | None = None  # ProbeResponse dicts, texts truncated


class FairnessRunOut(BaseModel):
    id: str
    status: RunStatus
    model: str
    suite_id: str
    suite_version: str
    suite_hash: str
    sampling: SamplingSettings
    source: Literal["server", "client"]
    engine: str | None
    expansion: ExpansionOptions
    concurrency: int | None
    runners: list[RunnerUse]
    progress: RunProgress
    error: str | None
    flagged_attributes: list[str]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def build(cls, row: Any, summary: RunSummary, **extra: Any) -> Any:
        """From a ``FairnessRun`` row (or a row of its columns) and its summary."""
        return cls(
            id=row.id,
            status=row.status,
            model=row.model,
            suite_id=row.suite_id,
            suite_version=row.suite_version,
            suite_hash=row.suite_hash,
            sampling=SamplingSettings.model_validate(row.sampling),
            source=summary.source,
            engine=summary.engine,
            expansion=summary.expansion,
            concurrency=summary.concurrency,
            runners=summary.runners,
            progress=summary.progress,
            error=summary.error,
            flagged_attributes=summary.flagged_attributes,
            created_at=row.created_at,
            finished_at=row.finished_at,
            **extra,
        )


class FairnessRunDetail(FairnessRunOut):
    report_settings: ReportSettings
    report: dict[str, Any] | None  # None until the run completes

    @classmethod
    def from_row(cls, row: Any) -> FairnessRunDetail:
        document = RunDocument.model_validate(row.report)
        detail: FairnessRunDetail = cls.build(
            row,
            document.summary,
            report_settings=document.summary.report_settings,
            report=document.report,
        )
        return detail
