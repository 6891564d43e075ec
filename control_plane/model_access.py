"""Per-key model allow-lists: model names and glob patterns a key may call.

A key without a list (``None``) may call every model its tenant can reach;
with one, a model is callable only if a name or pattern matches it (case-
sensitive ``fnmatch``: ``*``, ``?``, ``[...]``). The same test filters
``/v1/models`` and refuses a request with ``403 model_not_allowed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from outpost.control_plane.domain_errors import Invalid

__all__ = ["MAX_ENTRIES", "MAX_ENTRY_LEN", "model_allowed", "parse_allow_list"]

#: Bounds on what a caller may store: a list is a handful of names, not a data set.
MAX_ENTRIES = 100
MAX_ENTRY_LEN = 200


def parse_allow_list(entries: Iterable[str]) -> list[str]:
    """Trimmed, de-duplicated entries in their first order; :class:`Invalid` for a bad one.

    An empty list is allowed and means what it says: the key may call no model.
    """
    out: list[str] = []
    for raw in entries:
        if not isinstance(raw, str):
            raise Invalid("Each allowed model is a string.", param="allowed_models")
        entry = raw.strip()
        if not 1 <= len(entry) <= MAX_ENTRY_LEN or not entry.isprintable():
            raise Invalid(
                f"An allowed model is 1 to {MAX_ENTRY_LEN} printable characters, "
                f"not {entry[:40]!r}.",
                param="allowed_models",
            )
        if entry not in out:
            out.append(entry)
        if len(out) > MAX_ENTRIES:
            raise Invalid(f"At most {MAX_ENTRIES} allowed models per key.", param="allowed_models")
    return out


def model_allowed(allow: Sequence[str] | None, model: str) -> bool:
    """Whether a key with allow-list ``allow`` may call ``model`` (any of its names)."""
    if allow is None:
        return True
    return any(entry == model or fnmatchcase(model, entry) for entry in allow)
