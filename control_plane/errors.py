"""The one error type of the HTTP API, rendered as OpenAI's envelope.

``{"error": {"message", "type", "param", "code"}}`` with a matching status.
Handlers raise :class:`ApiError`; nothing else reaches the client.
"""

from __future__ import annotations

from typing import Any

# The envelope is the shared contract's (sdk/errors.py); re-exported for the routes.
from outpost.sdk.errors import error_body, error_json

__all__ = ["ApiError", "error_body", "sse_error_event"]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    # Common cases, so routes read as intent.
    @classmethod
    def unauthorized(cls, message: str = "Invalid API key.") -> ApiError:
        return cls(
            401,
            message,
            type="invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @classmethod
    def forbidden(cls, message: str) -> ApiError:
        return cls(403, message, type="permission_error", code="forbidden")

    @classmethod
    def not_found(cls, message: str, code: str = "not_found", param: str | None = None) -> ApiError:
        return cls(404, message, type="invalid_request_error", code=code, param=param)

    @classmethod
    def unavailable(cls, message: str, code: str = "no_runner_available") -> ApiError:
        return cls(
            503, message, type="service_unavailable", code=code, headers={"Retry-After": "1"}
        )


def sse_error_event(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    return b"data: " + error_json(message, type, code).encode() + b"\n\n"
