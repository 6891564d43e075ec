"""The record of one probe run: what was sent, to whom, and what came back.

A ``ProbeRun`` is self-contained: a report can be built from it alone (after
a JSON round trip, from the database, years later), so it carries the suite's
identity and hash, the sampling settings and the meaning of each outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingSettings(_Record):
    """Sent with every request and recorded with the run. Greedy decoding and
    a fixed seed by default, so the members of a counterfactual set differ
    only by the swapped terms, not by sampling noise."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Annotated[int, Field(ge=1)] = 256
    # Bounded: it is recorded in the audit chain, whose canonical JSON holds integers within
    # ±(2**53-1).
    seed: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)] | None = 0


class ProbeTarget(_Record):
    """Where the prompts went. ``engine`` and ``runner`` are labels for
    side-by-side comparison; the API key is never part of the record."""

    base_url: str
    model: str
    engine: str | None = None
    runner: str | None = None

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
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    outcomes: dict[str, float | None] = Field(default_factory=dict)


class ProbeRun(_Record):
    suite_id: str
    suite_version: str
    suite_hash: str
    expansion: ExpansionOptions
    target: ProbeTarget
    sampling: SamplingSettings
    outcome_specs: dict[str, OutcomeSpec]
    responses: list[ProbeResponse]
    extractor_errors: dict[str, str] = Field(default_factory=dict)
    started_at: datetime
    finished_at: datetime

    def count(self, status: ResponseStatus) -> int:
        return sum(1 for response in self.responses if response.status == status)
