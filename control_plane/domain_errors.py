"""Refusals of the domain (actions and services), free of any transport.

Actions raise these; each door maps them once: the API to an OpenAI error
envelope with a status (``control_plane/api/errors.py``), the console to a
flash message on the page, the CLI to a message on stderr and an exit code
(``control_plane/cli_db.py``). ``code`` and ``param`` travel to the envelope
unchanged, so API clients see the same ``code`` as before the split.
"""

from __future__ import annotations

__all__ = ["Conflict", "DomainError", "Forbidden", "Invalid", "NotFound"]


class DomainError(Exception):
    """A refusal the caller can act on; ``message`` is safe to show to the operator."""

    default_code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param


class NotFound(DomainError):
    """No such thing in the caller's tenant (another tenant's thing included: no existence
    oracle)."""

    default_code = "not_found"


class Conflict(DomainError):
    """The write clashes with what exists (a duplicate name)."""

    default_code = "conflict"


class Invalid(DomainError):
    """A value the schema allows but the domain refuses."""

    default_code = "invalid_request"


class Forbidden(DomainError):
    """The caller may not do this, whatever the values."""

    default_code = "forbidden"
