"""docs/security.md cannot drift: every test it names exists, and its tunnel matrix names every
frame."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from outpost.sdk import protocol

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "security.md").read_text()


def test_every_test_named_in_the_security_doc_exists() -> None:
    refs = set(re.findall(r"`(tests/[^`\s]+)`", DOC))
    assert len(refs) > 30
    missing = []
    for ref in sorted(refs):
        path, _, name = ref.partition("::")
        target = ROOT / path
        defined = (
            not name
            or target.is_file()
            and re.search(rf"^(async )?def {re.escape(name)}\(", target.read_text(), re.MULTILINE)
        )
        if not target.exists() or not defined:
            missing.append(ref)
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_the_tunnel_matrix_lists_every_frame_type() -> None:
    matrix = DOC[DOC.index("#### The tunnel frame matrix") :]
    types = [
        typing.get_args(cls.model_fields["type"].annotation)[0]
        for cls in typing.get_args(typing.get_args(protocol.Frame)[0])
    ]
    missing = [t for t in types if f"`{t}`" not in matrix]
    assert not missing, f"frame types missing from the matrix in docs/security.md: {missing}"
