"""docs/api.md cannot drift: every error code, header, policy and routing setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.settings import Settings

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
SOURCES = [
    ROOT / "control_plane" / p
    for p in (
        "api/openai.py",
        "openai/serving.py",
        "openai/failover.py",
        "errors.py",
        "api/limits.py",
        "api/errors.py",
    )
]


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)


def test_every_error_code_is_documented() -> None:
    codes = set(re.findall(r'code="([a-z_]+)"', _source())) | {"invalid_api_key", "model_not_found"}
    codes -= {
        "not_found",
        "method_not_allowed",
        "http_error",
        "forbidden",
    }  # generic HTTP fallbacks
    codes.discard("no_runner_available")  # default argument, documented below
    missing = sorted(c for c in codes | {"no_runner_available"} if f"`{c}`" not in DOC)
    assert not missing, f"undocumented error codes in docs/api.md: {missing}"


def test_every_response_header_is_documented() -> None:
    headers = set(re.findall(r'"(x-[a-z-]+|Retry-After)"', _source()))
    assert {"x-request-id", "x-outpost-runner", "x-outpost-routing", "Retry-After"} <= headers
    missing = sorted(h for h in headers if f"`{h}`" not in DOC)
    assert not missing, missing
    assert "`X-Outpost-Routing`" in DOC


def test_policies_and_routing_settings_are_documented() -> None:
    assert all(f"`{p}`" in DOC for p in POLICIES)
    settings = [
        f"OUTPOST_{name.upper()}" for name in Settings.model_fields if name.startswith("routing_")
    ]
    assert settings and all(f"`{s}`" in DOC for s in settings), settings
