"""Executing a server-side probe run in the background.

A :class:`ProbeJob` sends the run's prompts to the control plane's own
``/v1`` API with the run's key, writes progress about once a second, and
records the result (report, scored responses, runners, status) in one
transaction with its audit event and the key's revocation. The HTTP
transport is passed in; the default is the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import FairnessRun
from outpost.control_plane.store.fairness import (
    finish_fairness_run,
    revoke_probe_key,
    run_document,
    set_fairness_progress,
)

from .probe import ProbeRunner
from .report import build_report
from .runs import ProbeResponse, ProbeRun, ProbeTarget
from .schemas import RunnerUse, RunStatus
from .service import StartedRun, audit_probe_run, run_status, stored_responses
from .tally import RunnerTally

__all__ = ["ProbeJob", "launch_probe", "self_base_url"]

log = logging.getLogger("outpost.fairness")
_jobs: dict[str, asyncio.Task[None]] = {}  # referenced so they are not collected mid-run


def self_base_url(public_url: str, request_base_url: str) -> str:
    """Where the control plane reaches its own API: its public URL, unless
    that names port 0 (a free port picked at start), then the request's."""
    url = httpx.URL(public_url)
    return (request_base_url if url.port == 0 else public_url).rstrip("/")


@dataclass
class _Watch:
    """Progress counters, and a breaker: a run whose first prompts all fail
    (unknown model, no runner) stops instead of failing every prompt slowly."""

    breaker: int
    done: int = 0
    errors: int = 0
    answered: bool = False
    abort_reason: str | None = None
    task: asyncio.Task[ProbeRun] | None = None

    def seen(self, response: ProbeResponse) -> None:
        self.done += 1
        if response.status != "error":
            self.answered = True
            return
        self.errors += 1
        if not self.answered and self.errors >= self.breaker and self.abort_reason is None:
            self.abort_reason = (
                f"Stopped after the first {self.errors} prompts all failed; last: {response.error}"
            )
            if self.task is not None:
                self.task.cancel()


@dataclass
class ProbeJob:
    db: Database
    started: StartedRun
    base_url: str  # the control plane's root URL, without /v1
    engine: str | None = None
    transport: httpx.AsyncBaseTransport | None = None
    progress_every_s: float = 1.0
    _tally: RunnerTally = field(init=False)

    @property
    def run_id(self) -> str:
        return self.started.run.id

    async def execute(self) -> None:
        plan = self.started.plan
        self._tally = RunnerTally(self.transport)
        target = ProbeTarget(base_url=f"{self.base_url}/v1", model=plan.model, engine=self.engine)
        watch = _Watch(breaker=max(8, 2 * plan.concurrency))
        runner = ProbeRunner(
            target,
            self.started.api_key,
            sampling=plan.sampling,
            concurrency=plan.concurrency,
            transport=self._tally,
            show_progress=False,
            on_response=watch.seen,
        )
        watch.task = asyncio.create_task(runner.run(plan.suite, plan.expansion))
        ticker = asyncio.create_task(self._write_progress(watch))
        run: ProbeRun | None = None
        try:
            try:
                run = await watch.task
            finally:
                # Stopped before the result is written, so a late progress write cannot overwrite
                # it.
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if watch.abort_reason is None or (current is not None and current.cancelling()):
                await self._finish(
                    "cancelled", None, watch, "Interrupted: the control plane shut down."
                )
                raise
        except Exception as exc:
            log.exception("fairness run %s failed", self.run_id)
            await self._finish("failed", None, watch, f"The probe failed: {exc!r}")
            return
        if run is None:
            await self._finish("failed", None, watch, watch.abort_reason)
            return
        status, error = run_status(run)
        await self._finish(status, run, watch, error)

    async def _write_progress(self, watch: _Watch) -> None:
        written = (0, 0)
        while True:
            await asyncio.sleep(self.progress_every_s)
            if (watch.done, watch.errors) == written:
                continue
            written = (watch.done, watch.errors)
            try:
                async with self.db.session() as session:
                    row = await session.get(FairnessRun, self.run_id)
                    if row is not None:
                        await set_fairness_progress(
                            session, row, done=written[0], errors=written[1]
                        )
                        await session.commit()
            except Exception:
                log.warning(
                    "could not write progress of fairness run %s", self.run_id, exc_info=True
                )

    async def _finish(
        self, status: RunStatus, run: ProbeRun | None, watch: _Watch, error: str | None
    ) -> None:
        runners = self._tally.runners()
        try:
            report: dict[str, Any] | None = None
            if (
                run is not None and status == "completed"
            ):  # a run without a single answer has no report
                target = run.target.model_copy(update={"runner": self._tally.label()})
                run = run.model_copy(update={"target": target})
                settings = self.started.plan.report_settings
                report = (await asyncio.to_thread(build_report, run, settings)).to_dict()
            await self._record(status, run, report, runners, watch, error)
        except (
            Exception
        ) as exc:  # never leave a run "running" because its result could not be written
            log.exception("could not record fairness run %s; marking it failed", self.run_id)
            try:
                await self._record(
                    "failed",
                    None,
                    None,
                    runners,
                    watch,
                    f"The result could not be recorded: {exc!r}",
                    audit=False,
                )
            except Exception:
                log.exception("could not mark fairness run %s failed", self.run_id)

    async def _record(
        self,
        status: RunStatus,
        run: ProbeRun | None,
        report: dict[str, Any] | None,
        runners: list[RunnerUse],
        watch: _Watch,
        error: str | None,
        *,
        audit: bool = True,
    ) -> None:
        async with self.db.session() as session:
            row = await session.get(FairnessRun, self.run_id)
            if row is None:  # the tenant was deleted meanwhile
                return
            document = run_document(row)
            summary = document.summary
            summary.runners, summary.error = runners, error
            summary.progress.done, summary.progress.errors = watch.done, watch.errors
            if run is not None:
                document.responses = stored_responses(run.responses)
            if report is not None:
                summary.flagged_attributes = list(report["flagged_attributes"])
                document.report = report
            await finish_fairness_run(session, row, status=status, document=document)
            if summary.probe_key_id:
                await revoke_probe_key(session, summary.probe_key_id)
            if audit:
                await audit_probe_run(session, row, document)
            await session.commit()


def launch_probe(job: ProbeJob) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(job.execute(), name=f"fairness-run-{job.run_id}")
    _jobs[job.run_id] = task
    task.add_done_callback(lambda _: _jobs.pop(job.run_id, None))
    return task
