"""Render docs/configuration.md from the settings classes (the single source of truth).

.venv/bin/python scripts/gen_config_docs.py          # rewrite the file
.venv/bin/python scripts/gen_config_docs.py --check  # exit 1 if it is stale (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from outpost.control_plane.cli import SECRET_FLAGS as CP_SECRET_FLAGS
from outpost.control_plane.settings import Settings
from outpost.runner.settings import SECRET_FLAGS, RunnerSettings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """# Configuration

Generated from `control_plane/settings.py` and `runner/settings.py` by
`scripts/gen_config_docs.py`; a test fails when this file is stale, so it
cannot drift. Every setting is an environment variable and a flag of the
command that reads it (`control-plane serve` and `up`, `runner local-runner`;
the flags are derived from the settings), secrets excepted: they are read
from the environment only, so they never appear in process lists.
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(derived)"
    value = field.default
    return "" if value is None else f"`{value}`"


def _table(cls: type[BaseSettings], secret_flags: tuple[str, ...]) -> list[str]:
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        env = f"`OUTPOST_{name.upper()}`"
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        flag = "--" + name.replace("_", "-")
        flag_cell = "(env only)" if flag in secret_flags else f"`{flag}`"
        rows.append(f"| {env} | {flag_cell} | {_default(field)} | {desc} |")
    return rows


def render() -> str:
    lines = [HEADER, "## Control plane (`control-plane serve`, `control-plane up`)", ""]
    lines += _table(Settings, CP_SECRET_FLAGS)
    lines += ["", "## Runner (`runner local-runner`)", ""]
    lines += _table(RunnerSettings, SECRET_FLAGS)
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
