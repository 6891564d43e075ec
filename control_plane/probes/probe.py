"""Send a probe suite to any OpenAI-compatible endpoint and record the answers.

The HTTP transport is passed in (``httpx.MockTransport`` in the tests, the
default network transport otherwise), and so is the clock. A failed prompt is
recorded with its error and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .extractors import Extractor, default_extractors, extract_outcomes
from .runs import ProbeResponse, ProbeRun, ProbeTarget, SamplingSettings
from .suites import ExpansionOptions, ProbePrompt, Suite, expand_suite, suite_hash

__all__ = ["ProbeRunner"]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _PromptFailed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return (
        f"HTTP {response.status_code}: {message or response.text[:200] or response.reason_phrase}"
    )


class ProbeRunner:
    """Runs probe suites against one model behind an OpenAI-compatible API.

    ``base_url`` is the API root including ``/v1`` (as with the ``openai``
    client). ``concurrency`` bounds requests in flight; retryable failures
    (timeouts, connection errors, 408/409/429/5xx) are retried ``retries``
    times with exponential backoff. ``on_response`` is called with each
    prompt's final result as it arrives (before scoring), for progress
    reporting outside a terminal.
    """

    def __init__(
        self,
        target: ProbeTarget,
        api_key: str,
        *,
        sampling: SamplingSettings | None = None,
        extractors: Sequence[Extractor] | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        console: Console | None = None,
        show_progress: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        on_response: Callable[[ProbeResponse], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.target = target
        self.sampling = sampling or SamplingSettings()
        self.extractors = list(extractors) if extractors is not None else default_extractors()
        names = [extractor.spec.name for extractor in self.extractors]
        if len(set(names)) != len(names):
            raise ValueError(f"outcome names must be unique: {names}")
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.clock = clock
        self.on_response = on_response
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport

    async def run(self, suite: Suite, options: ExpansionOptions | None = None) -> ProbeRun:
        """Expand ``suite`` with ``options``, send every prompt, score the answers."""
        options = options or ExpansionOptions()
        prompts = expand_suite(suite, options)
        started = self.clock()
        responses = await self._send_all(prompts)
        errors = self._score(responses)
        return ProbeRun(
            suite_id=suite.id,
            suite_version=suite.version,
            suite_hash=suite_hash(suite),
            expansion=options,
            target=self.target,
            sampling=self.sampling,
            outcome_specs={e.spec.name: e.spec for e in self.extractors},
            responses=responses,
            extractor_errors=errors,
            started_at=started,
            finished_at=self.clock(),
        )

    def _body(self, prompt: ProbePrompt) -> dict[str, Any]:
        messages = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": prompt.text})
        body = {
            "model": self.target.model,
            "messages": messages,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_tokens,
            "stream": False,
        }
        if self.sampling.seed is not None:
            body["seed"] = self.sampling.seed
        return body

    async def _send_all(self, prompts: list[ProbePrompt]) -> list[ProbeResponse]:
        semaphore = asyncio.Semaphore(self.concurrency)
        progress = Progress(
            TextColumn("[bold]probing {task.fields[model]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("errors {task.fields[errors]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.show_progress,
        )
        task = progress.add_task("probe", total=len(prompts), model=self.target.model, errors=0)
        failures = 0

        async def one(client: httpx.AsyncClient, prompt: ProbePrompt) -> ProbeResponse:
            nonlocal failures
            async with semaphore:
                response = await self._send(client, prompt)
            failures += response.status == "error"
            progress.update(task, advance=1, errors=failures)
            if self.on_response is not None:
                self.on_response(response)
            return response

        headers = {"Authorization": f"Bearer {self._api_key}"}
        async with httpx.AsyncClient(
            base_url=self.target.base_url.rstrip("/"),
            headers=headers,
            timeout=self._timeout,
            transport=self._transport,
        ) as client:
            with progress:
                return list(await asyncio.gather(*(one(client, p) for p in prompts)))

    async def _send(self, client: httpx.AsyncClient, prompt: ProbePrompt) -> ProbeResponse:
        started = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                data = await self._post(client, prompt)
                break
            except _PromptFailed as failure:
                if not failure.retryable or attempt == self.retries:
                    return ProbeResponse(
                        prompt=prompt,
                        status="error",
                        error=str(failure),
                        latency_s=time.perf_counter() - started,
                    )
                await asyncio.sleep(self.backoff_s * 2**attempt)
        latency = time.perf_counter() - started
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ProbeResponse(
                prompt=prompt, status="error", error="malformed completion", latency_s=latency
            )
        usage = data.get("usage") or {}
        return ProbeResponse(
            prompt=prompt,
            status="ok" if text.strip() else "empty",
            text=text,
            finish_reason=finish_reason,
            latency_s=latency,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    async def _post(self, client: httpx.AsyncClient, prompt: ProbePrompt) -> dict[str, Any]:
        try:
            response = await client.post("/chat/completions", json=self._body(prompt))
        except httpx.TimeoutException as exc:
            raise _PromptFailed(f"timeout: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise _PromptFailed(f"transport error: {exc!r}", retryable=True) from exc
        if response.status_code != 200:
            raise _PromptFailed(
                _error_message(response), retryable=response.status_code in RETRY_STATUSES
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise _PromptFailed("response is not JSON", retryable=False) from exc
        if not isinstance(data, dict):
            raise _PromptFailed("response is not a JSON object", retryable=False)
        return data

    def _score(self, responses: list[ProbeResponse]) -> dict[str, str]:
        """Fill in outcomes for the "ok" responses; one extractor failing
        (a classifier service down, say) leaves its outcome empty, not the run."""
        scored = [r for r in responses if r.status == "ok"]
        texts = [r.text or "" for r in scored]
        errors: dict[str, str] = {}
        for extractor in self.extractors:
            name = extractor.spec.name
            try:
                values = extract_outcomes([extractor], texts)
            except Exception as exc:  # noqa: BLE001 - any extractor fault is recorded, not fatal
                errors[name] = repr(exc)
                values = [{name: None} for _ in texts]
            for response, value in zip(scored, values, strict=True):
                response.outcomes.update(value)
        return errors
