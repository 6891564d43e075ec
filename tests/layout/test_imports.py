"""One import root: nothing in the checkout imports the old top-level names (``sdk``,
``runner``, ``control_plane``, ``web``, ``migrations``) or starts them as ``python -m``.

They exist only beneath ``outpost`` (outpost/ holds links to the folders); an old name would
work in the checkout by accident (the repository root is on sys.path in tests) and fail from
an installed wheel.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLD = ("sdk", "runner", "control_plane", "web", "migrations")
#: ``python -m sdk.x`` and friends in scripts, Dockerfiles, docs and code.
_DASH_M = re.compile(rf"-m\s+({'|'.join(OLD)})\.")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]


def _old_imports(source: str, where: str) -> list[str]:
    tree = ast.parse(source, where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{where}:{node.lineno} {n}" for n in names if n.split(".")[0] in OLD]
    return found


def test_no_module_imports_an_old_top_level_name() -> None:
    found = [
        hit
        for path in _tracked("*.py")
        for hit in _old_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not found, "import through outpost.*: " + ", ".join(found)


def test_no_command_starts_an_old_top_level_module() -> None:
    files = _tracked(
        "*.py", "*.sh", "*.md", "*.toml", "*.yml", "*.yaml", "Dockerfile*", "scripts/*"
    )
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        for path in files
        if path != Path(__file__).resolve()  # this file names the patterns it looks for
        for text in [path.read_text(encoding="utf-8", errors="replace")]
        for m in _DASH_M.finditer(text)
    ]
    assert not found, "python -m outpost.<part>...: " + ", ".join(found)


def test_the_checks_see_real_imports() -> None:
    """The scanner itself: it flags what it should, and only that."""
    assert _old_imports("import outpost.sdk\nfrom outpost.runner import cli\n", "ok.py") == []
    assert len(_old_imports("import sdk.client\nfrom control_plane.app import x\n", "old.py")) == 2
    assert _old_imports("from . import web\nimport webbrowser\n", "relative.py") == []
    assert _DASH_M.search("python -m control_plane.cli serve")
    assert not _DASH_M.search("python -m outpost.control_plane.cli serve")
