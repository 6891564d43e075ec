"""Render docs/configuration.md from the settings classes (the single source of truth).

.venv/bin/python scripts/gen_config_docs.py          # rewrite the file
.venv/bin/python scripts/gen_config_docs.py --check  # exit 1 if it is stale (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from outpost.control_plane.settings import Settings
from outpost.runner.settings import SECRET_FLAGS, RunnerSettings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """# Configuration

Generated from `control_plane/settings.py` and `runner/settings.py` by
`scripts/gen_config_docs.py`; a test fails when this file is stale, so it
cannot drift. Every setting is an environment variable; the runner's are
also `runner local-runner` flags (secrets excepted: they are read from the
environment only, so they never appear in process lists).
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(derived)"
    value = field.default
    return "" if value is None else f"`{value}`"


def _table(cls: type[BaseSettings], flags: bool) -> list[str]:
    head = "| env var | flag | default | meaning |" if flags else "| env var | default | meaning |"
    rows = [head, "|---|---|---|---|" if flags else "|---|---|---|"]
    for name, field in cls.model_fields.items():
        env = f"`OUTPOST_{name.upper()}`"
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        if flags:
            flag = "--" + name.replace("_", "-")
            flag_cell = "(env only)" if flag in SECRET_FLAGS else f"`{flag}`"
            rows.append(f"| {env} | {flag_cell} | {_default(field)} | {desc} |")
        else:
            rows.append(f"| {env} | {_default(field)} | {desc} |")
    return rows


def render() -> str:
    lines = [HEADER, "## Control plane (`control-plane serve`, `control-plane up`)", ""]
    lines += _table(Settings, flags=False)
    lines += ["", "## Runner (`runner local-runner`)", ""]
    lines += _table(RunnerSettings, flags=True)
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
