"""Log lines both processes share: a request id per task, and a JSON or text format.

The control plane sets :data:`REQUEST_ID` for every HTTP request and sends it
to the runner in ``request.v1``; the runner sets it for the stream's task. Any
log line written while handling that request then carries the id, so one
request can be followed across both processes (``docs/deploy.md``).

Only the record's own fields are written (time, level, logger, message,
request id, exception): never the ``extra`` of a call or anything from a
request, so a header or body cannot reach the log by accident.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_PATTERN",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "escape_text",
    "new_request_id",
    "valid_request_id",
]

LogFormat = Literal["text", "json"]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


#: The levels either process takes (``--log-level``, any case); anything else is refused at
#: start-up with the flag's name, not a traceback from ``logging``.
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]

#: The request this task is working for; ``None`` outside a request.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "outpost_request_id", default=None
)

#: What an incoming ``X-Request-Id`` may look like to be honoured: bounded, and
#: nothing that could forge a log line or a label (no spaces, quotes, newlines).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_VALID = re.compile(REQUEST_ID_PATTERN)


def valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID.fullmatch(value) is not None


def new_request_id() -> str:
    # The shape of every other id here (``control_plane.db.models.new_id``), so a
    # generated request id can also name the request's record.
    return f"req_{secrets.token_hex(10)}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id``, ``exc``."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


#: C0 and C1 control characters (CR, LF, ESC of ANSI sequences...), DEL, and the Unicode line and
#: paragraph
#: separators: none may reach a text log line from a message's arguments.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_text(text: str) -> str:
    """``text`` on one line with no terminal escapes: control characters become ``\\n``,
    ``\\x1b``..."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """The human format, with the request id appended when there is one.

    A message is escaped (:func:`escape_text`): it may quote what a runner or a client sent (an
    ``end.v1`` error, a frame's reason), and a CR/LF or an ANSI sequence there would forge log
    lines or rewrite the operator's terminal. A traceback, which is ours, keeps its lines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_text(record.message)
        return super().formatMessage(safe)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [{request_id}]" if request_id else text


def configure_logging(fmt: LogFormat, level: str | int, *, process: str) -> None:
    """One handler on the root logger, to stderr; every library logger propagates to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every request at INFO: the runner's engine health and metrics polls
    # would fill the log every two seconds. Its warnings still come through.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
