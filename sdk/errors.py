"""Exceptions of the Outpost SDK.

Every failure the client raises is an :class:`OutpostError`. HTTP errors map
the control plane's OpenAI envelope ``{"error": {message, type, param, code}}``
onto :class:`APIStatusError` subclasses by status (and, for 429, by ``code``:
an exhausted budget is not a rate limit and is never retried). End-to-end
failures are :class:`EndToEndError`; their ``__cause__`` is the precise
:mod:`sdk.e2e` error.

::

    OutpostError
    ├── APIError                      (anything the server side did)
    │   ├── APIConnectionError
    │   │   └── APITimeoutError
    │   └── APIStatusError            (.status_code .type .code .param .request_id)
    │       ├── BadRequestError          400
    │       ├── AuthenticationError      401
    │       ├── PermissionDeniedError    403
    │       ├── NotFoundError            404
    │       ├── ConflictError            409
    │       ├── UnprocessableEntityError 422
    │       ├── RateLimitError           429
    │       ├── BudgetExceededError      429, code budget_exceeded
    │       ├── InternalServerError      500 and other 5xx
    │       └── ServiceUnavailableError  503
    └── EndToEndError
        ├── RunnerKeyError             (a key that fails its pin: a swapped key)
        ├── NoPinnedRunnerError
        └── StreamIntegrityError       (tampered, reordered, truncated answer)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ConflictError",
    "EndToEndError",
    "InternalServerError",
    "NoPinnedRunnerError",
    "NotFoundError",
    "OutpostError",
    "PermissionDeniedError",
    "RateLimitError",
    "RunnerKeyError",
    "ServiceUnavailableError",
    "StreamIntegrityError",
    "UnprocessableEntityError",
    "error_body",
    "error_for_status",
    "error_json",
]


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope: the one shape the control plane and the runner answer with, and
    the SDK reads."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_json(message: str, type: str, code: str | None = None, param: str | None = None) -> str:
    """:func:`error_body` as a JSON document (a response body, an SSE event's data)."""
    return json.dumps(error_body(message, type, code, param))


class OutpostError(Exception):
    """Base class of everything the SDK raises."""


class APIError(OutpostError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """The request did not complete: no connection, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request took longer than its timeout."""


class APIStatusError(APIError):
    """The server answered with an error status and (usually) an OpenAI error envelope."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = f" ({self.code})" if self.code else ""
        return f"{self.status_code}{code}: {self.message}"


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class BudgetExceededError(APIStatusError):
    """The key's or tenant's budget is spent; ``retry_after`` says when the period resets."""


class InternalServerError(APIStatusError):
    pass


class ServiceUnavailableError(InternalServerError):
    pass


class EndToEndError(OutpostError):
    """End-to-end mode refused something; ``__cause__`` is the :mod:`sdk.e2e` error."""


class RunnerKeyError(EndToEndError):
    """A runner's key document does not verify against the pinned fingerprint."""


class NoPinnedRunnerError(EndToEndError):
    """No connected runner serving the model has a pinned identity."""


class StreamIntegrityError(EndToEndError):
    """An encrypted answer was altered, reordered, replayed or cut short."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_for_status(
    status: int,
    body: bytes | str | Any,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """The exception for an error response; ``body`` is raw bytes or an already parsed event."""
    parsed: Any = body
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "error")
        kind, code, param = err.get("type"), err.get("code"), err.get("param")
    else:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        message, kind, code, param = text[:500] or f"HTTP {status}", None, None, None
    if status == 429 and (code == "budget_exceeded" or kind == "budget_exceeded"):
        cls: type[APIStatusError] = BudgetExceededError
    else:
        cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(
        message,
        status_code=status,
        type=kind if isinstance(kind, str) else None,
        code=code if isinstance(code, str) else None,
        param=param if isinstance(param, str) else None,
        request_id=request_id,
        body=parsed,
        retry_after=retry_after,
    )
