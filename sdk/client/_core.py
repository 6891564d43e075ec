"""The client's logic without I/O: requests, retry decisions, errors, stream decoding.

:class:`~sdk.client.AsyncClient` and :class:`~sdk.client.Client` are thin
shells that send what this module builds and feed it what comes back, so
the two cannot drift in behaviour.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from outpost.sdk.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BudgetExceededError,
    error_for_status,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientOptions",
    "Decoder",
    "PlainDecoder",
    "Prepared",
    "RetryPolicy",
    "parse_json",
    "parse_model",
    "response_error",
    "retry_on_error",
    "retry_on_status",
    "sse_data",
    "transport_error",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
T_co = TypeVar("T_co", covariant=True)

DEFAULT_TIMEOUT = 60.0
ENV_BASE_URL = "OUTPOST_BASE_URL"
ENV_API_KEY = "OUTPOST_API_KEY"
# Refusals made before the control plane dispatched anything: a POST may be retried.
_NOT_DISPATCHED = frozenset({"no_runner_available", "runner_not_connected", "rate_limit_exceeded"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` wins when the server sends one."""

    max_retries: int = 2
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_after_cap_s: float = 60.0

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_cap_s))
        return rand() * min(self.backoff_cap_s, self.backoff_base_s * 2.0**attempt)


@dataclass(frozen=True)
class ClientOptions:
    base_url: str
    api_key: str | None
    timeout: float | httpx.Timeout
    retry: RetryPolicy
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        retry: RetryPolicy,
        headers: Mapping[str, str] | None,
    ) -> ClientOptions:
        url = base_url or os.environ.get(ENV_BASE_URL) or "http://127.0.0.1:8080"
        url = url.rstrip("/")
        # OpenAI clients are configured with ".../v1"; the admin API lives beside it.
        url = url.removesuffix("/v1")
        return cls(
            base_url=url,
            api_key=api_key if api_key is not None else os.environ.get(ENV_API_KEY),
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            retry=retry,
            headers=dict(headers or {}),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Request:
        all_headers = {
            "Accept": "application/json",
            "User-Agent": "outpost-sdk/0.1",
            **self.headers,
        }
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        all_headers.update(headers or {})
        chosen = self.timeout if timeout is None else timeout
        t = (
            chosen
            if isinstance(chosen, httpx.Timeout)
            else httpx.Timeout(chosen, connect=min(chosen, 10.0))
        )
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return httpx.Request(
            method,
            self.base_url + path,
            json=json_body,
            params=clean or None,
            headers=all_headers,
            extensions={"timeout": t.as_dict()},
        )


@dataclass
class Prepared:
    """One attempt's request; ``idempotent`` allows retrying after it may have reached the
    server."""

    request: httpx.Request
    idempotent: bool
    context: Any = None  # e2e: the SealedCall whose response key opens this attempt's answer


def retry_on_error(prepared: Prepared, exc: httpx.TransportError) -> bool:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # the request never left: safe for any method
    return prepared.idempotent and isinstance(
        exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def retry_on_status(prepared: Prepared, error: APIStatusError) -> bool:
    if isinstance(error, BudgetExceededError):
        return False  # the budget will not come back in seconds
    if error.status_code == 429:
        return True  # refused before any work
    if error.status_code in (502, 503, 504):
        return prepared.idempotent or error.code in _NOT_DISPATCHED
    return False


def transport_error(exc: httpx.TransportError) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out ({type(exc).__name__})")
    return APIConnectionError(f"connection failed: {exc or type(exc).__name__}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def response_error(response: httpx.Response, body: bytes) -> APIStatusError:
    return error_for_status(
        response.status_code,
        body,
        request_id=response.headers.get("x-request-id"),
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def parse_model(model: type[M], doc: Any) -> M:
    """Validate a response document, turning a shape mismatch into an :class:`APIError`."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise APIError(
            f"unexpected {model.__name__} from the server: {exc.errors()[0]['msg']}"
        ) from None


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise APIError(f"the server answered with invalid JSON: {body[:200]!r}") from None


def sse_data(line: str) -> str | None:
    """The data of one ``text/event-stream`` line, or ``None`` for comments and other fields."""
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data.removeprefix(" ")


class Decoder(Protocol[T_co]):
    """Turns the data of successive SSE events into items; ``finish`` at end of transport."""

    def feed(self, data: str) -> Sequence[T_co]: ...

    def finish(self) -> None: ...


class PlainDecoder(Generic[T]):
    """An OpenAI stream: JSON events, an error event after the first byte, ``[DONE]``."""

    def __init__(self, parse: Callable[[Any], T]) -> None:
        self._parse = parse
        self.done = False

    def feed(self, data: str) -> list[T]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        obj = parse_json(data.encode())
        if isinstance(obj, dict) and obj.get("error"):
            raise error_for_status(502, obj)
        return [self._parse(obj)]

    def finish(self) -> None:
        return None
