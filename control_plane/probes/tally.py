"""Which runner answered: Outpost names it in every response's ``x-outpost-runner`` header.

An ``httpx`` transport wrapper, so the probe runner needs no change to learn
it; against a server that sends no such header the tally stays empty.
"""

from __future__ import annotations

from collections import Counter

import httpx

from .schemas import RunnerUse

__all__ = ["RUNNER_HEADER", "RunnerTally"]

RUNNER_HEADER = "x-outpost-runner"


class RunnerTally(httpx.AsyncBaseTransport):
    """Counts the requests each runner answered."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.counts: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if runner := response.headers.get(RUNNER_HEADER):
            self.counts[runner[:64]] += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def runners(self) -> list[RunnerUse]:
        return [RunnerUse(id=rid, requests=n) for rid, n in self.counts.most_common()]

    def label(self) -> str | None:
        """For ``ProbeTarget.runner``: the runners' ids, most used first."""
        return ",".join(r.id for r in self.runners()) or None
