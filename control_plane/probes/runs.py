"""The record of one probe run: what was sent, to whom, and what came back.

A ``ProbeRun`` is self-contained: a report can be built from it alone (after
a JSON round trip, from the database, years later), so it carries the suite's
identity and hash, the sampling settings and the meaning of each outcome.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .extractors import OutcomeSpec
from .suites import ExpansionOptions, ProbePrompt

__all__ = [
    "ProbeResponse",
    "ProbeRun",
    "ProbeTarget",
    "ResponseStatus",
    "SamplingSettings",
]

ResponseStatus = Literal["ok", "empty", "error"]


# A run arrives from a client (``POST /api/fairness/runs/import``): every number is bounded here
# so that the report, the stored JSON and the audit chain (integers within ±(2**53-1)) can hold it.
_MAX_TOKENS = 1_000_000  # beyond any model's context; the server's own limit is checked later
_MAX_COUNT = 2**31 - 1
_MAX_SCORE = 1e12  # outcome scores are rates, probabilities or lengths
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
Label = Annotated[str, StringConstraints(max_length=200)]


class _Record(BaseModel):
    # JSON has no NaN or Infinity, PostgreSQL's JSONB refuses them, and statistics over them are
    # meaningless: floats are finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SamplingSettings(_Record):
    """Sent with every request and recorded with the run. Greedy decoding and
    a fixed seed by default, so the members of a counterfactual set differ
    only by the swapped terms, not by sampling noise."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Annotated[int, Field(ge=1, le=_MAX_TOKENS)] = 256
    # Bounded: it is recorded in the audit chain, whose canonical JSON holds integers within
    # ±(2**53-1).
    seed: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)] | None = 0


class ProbeTarget(_Record):
    """Where the prompts went. ``engine`` and ``runner`` are labels for
    side-by-side comparison; the API key is never part of the record."""

    base_url: Annotated[str, StringConstraints(max_length=2048)]
    model: Label
    engine: Label | None = None
    runner: Label | None = None

    @property
    def label(self) -> str:
        return " @ ".join(part for part in (self.model, self.engine, self.runner) if part)


class ProbeResponse(_Record):
    """One prompt's result. ``outcomes`` is filled only for status "ok";
    a ``None`` outcome means the extractor could not score this text."""

    prompt: ProbePrompt
    status: ResponseStatus
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    latency_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    prompt_tokens: Annotated[int, Field(ge=0, le=_MAX_COUNT)] | None = None
    completion_tokens: Annotated[int, Field(ge=0, le=_MAX_COUNT)] | None = None
    outcomes: dict[str, Annotated[float, Field(ge=-_MAX_SCORE, le=_MAX_SCORE)] | None] = Field(
        default_factory=dict
    )


class ProbeRun(_Record):
    suite_id: Label
    suite_version: Label
    suite_hash: Label
    expansion: ExpansionOptions
    target: ProbeTarget
    sampling: SamplingSettings
    outcome_specs: dict[str, OutcomeSpec]
    responses: list[ProbeResponse]
    extractor_errors: dict[str, str] = Field(default_factory=dict)
    started_at: datetime
    finished_at: datetime

    @model_validator(mode="after")
    def _times(self) -> Self:
        # Times are stored in UTC. A far-past time with a large offset cannot even be converted
        # (year 0), and one outside this century's neighbourhood is a mistake, not a run.
        started, finished = (
            _utc(self.started_at, "started_at"),
            _utc(self.finished_at, "finished_at"),
        )
        if finished < started:
            raise ValueError("finished_at is before started_at")
        self.started_at, self.finished_at = started, finished
        return self

    def count(self, status: ResponseStatus) -> int:
        return sum(1 for response in self.responses if response.status == status)


def _utc(ts: datetime, name: str) -> datetime:
    try:
        utc = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc < _LATEST:
        raise ValueError(f"{name} must be between {_EARLIEST.year} and {_LATEST.year} (UTC)")
    return utc
