"""Exception handlers: every failure leaves as an OpenAI error envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from outpost.control_plane.db.engine import DATABASE_DOWN
from outpost.control_plane.domain_errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from outpost.control_plane.errors import ApiError, error_body

log = logging.getLogger("outpost.api")

__all__ = ["http_status", "install_error_handlers", "to_api_error"]

#: The one place a domain refusal becomes an HTTP status and an envelope type.
_DOMAIN_STATUS: dict[type[DomainError], tuple[int, str]] = {
    NotFound: (404, "invalid_request_error"),
    Conflict: (409, "invalid_request_error"),
    Invalid: (400, "invalid_request_error"),
    Forbidden: (403, "permission_error"),
}


def _status_and_type(exc: DomainError) -> tuple[int, str]:
    return next(
        (v for k, v in _DOMAIN_STATUS.items() if isinstance(exc, k)), (400, "invalid_request_error")
    )


def http_status(exc: DomainError) -> int:
    """The status of a refusal, for the console's pages as for the API's answers."""
    return _status_and_type(exc)[0]


def to_api_error(exc: DomainError) -> ApiError:
    status, kind = _status_and_type(exc)
    return ApiError(status, exc.message, type=kind, code=exc.code, param=exc.param)


#: Error statuses every operation may answer, each with the OpenAI envelope (FastAPI's 422 is
#: never sent: validation errors are 400).
_ERROR_STATUSES = {
    "400": "Invalid request.",
    "401": "Missing or invalid API key.",
    "403": "Not allowed.",
    "404": "Not found.",
    "409": "Conflict.",
    "413": "Request body too large.",
    "429": "Rate limit, budget or queue limit reached.",
    "503": "No runner available, or the database is unavailable.",
}
_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _document_errors(app: FastAPI) -> None:
    """Declare the error envelope in the OpenAPI document, so clients (and schemathesis) know
    every answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorEnvelope"] = _ENVELOPE
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in _ERROR_STATUSES.items():
                    responses.setdefault(status, {"description": description, "content": ref})
        return schema

    # FastAPI's documented way to extend the schema is to replace app.openapi; mypy refuses any
    # assignment to a method.
    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    _document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        error = to_api_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = "Request body is not valid JSON.", None
        else:
            param = ".".join(loc) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # One line, no traceback: an outage would otherwise flood the log. The driver's first line
        # says which (refused, dropped, locked, or a missing table after a skipped migration);
        # drivers do not put passwords in their messages, and the line is bounded.
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        log.warning(
            "database unavailable: %s: %s", type(exc).__name__, cause[0][:200] if cause else ""
        )
        return JSONResponse(
            error_body(
                "The database is unavailable; retry shortly.",
                "service_unavailable",
                "database_unavailable",
            ),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    for kind in DATABASE_DOWN:
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body("Internal error; it has been logged.", "server_error", "internal_error"),
            status_code=500,
        )
