"""Generate the SDK's blocking client from its asynchronous source.

    .venv/bin/python scripts/unasync_sdk.py          # rewrite sdk/client/_sync_client.py
    .venv/bin/python scripts/unasync_sdk.py --check  # exit 1 if it is out of date

The asynchronous client is the one written by hand (STYLE.md: never two
hand-kept copies); this is the same rewrite httpcore uses (``unasync``): drop
``async``/``await``, rename ``AsyncX`` → ``X`` and the async spellings of
httpx and asyncio calls.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sdk" / "client" / "_async_client.py"
TARGET = ROOT / "sdk" / "client" / "_sync_client.py"

HEADER = '''"""The blocking client. GENERATED from ``_async_client.py`` by
``scripts/unasync_sdk.py`` — do not edit; change the async source and rerun.
"""
'''

RULES: list[tuple[str, str]] = [
    (r"^import asyncio$", "import time"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\baread\b", "read"),
    (r"\baclose\b", "close"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\b_Async([A-Z]\w*)", r"_\1"),
]


def generate(source: str) -> str:
    module = ast.parse(source)
    first = module.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        raise SystemExit("the async source must start with a docstring")
    body = "\n".join(source.splitlines()[first.end_lineno :]) + "\n"
    for pattern, repl in RULES:
        body = re.sub(pattern, repl, body, flags=re.MULTILINE)
    # A sync generator can delegate; an async one cannot.
    body = re.sub(
        r"^(\s+)for (\w+) in (.+):\n\s+yield \2\n", r"\1yield from \3\n", body, flags=re.MULTILINE
    )
    return _ruff(HEADER + _sort_imports(body))


def _ruff(text: str) -> str:
    """Format the output as the checked-in code is formatted (``ruff format`` in scripts/test):
    dropping ``await`` shortens lines, so the async source's wrapping is not the sync one's."""
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run(
        [str(ruff), "format", "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout


def _sort_imports(body: str) -> str:
    """Renames can unsort imports (asyncio → time, AsyncIterator → Iterator): sort them again."""
    out: list[str] = []
    block: list[str] = []
    for line in [*body.split("\n"), None]:
        if line is not None and line.startswith("import "):
            block.append(line)
            continue
        out.extend(sorted(block))
        block = []
        if line is None:
            break
        if line.startswith("from ") and " import " in line and "(" not in line:
            head, _, names = line.partition(" import ")
            ordered = sorted((n.strip() for n in names.split(",")), key=_name_key)
            line = f"{head} import {', '.join(ordered)}"
        out.append(line)
    return "\n".join(out)


def _name_key(name: str) -> tuple[int, str]:
    # isort's order by type (ruff's default): CONSTANTS, Classes, functions.
    if name.isupper() and len(name) > 1:
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def main(argv: list[str]) -> int:
    wanted = generate(SOURCE.read_text())
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(
                f"{TARGET.relative_to(ROOT)} is out of date: run scripts/unasync_sdk.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(wanted)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
