"""``--model`` values → the models a runner serves, each under a public id.

``--model PATH_OR_ID`` serves the model under the id its metadata gives
(``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``);
``--model NAME=PATH_OR_ID`` names it. Every id must be unique on the runner:
the control plane routes a request to an engine by the ``model`` it names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings validate --model syntax without loading the GGUF reader
    from outpost.runner.gguf_meta import ModelSpec

__all__ = ["MODEL_ID_PATTERN", "ModelRef", "ModelRefError", "parse_model_ref", "resolve_models"]

#: A public model id: what clients put in ``model``. Hub-style ``org/name`` is allowed;
#: a leading ``/``, ``.`` or ``~`` (a path) is not, so ``/data/a=b.gguf`` stays a path.
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,199}")


class ModelRefError(ValueError):
    """A ``--model`` value that cannot be served as given (bad id, duplicate id)."""


@dataclass(frozen=True)
class ModelRef:
    #: The id the user gave (``NAME=``), or None to derive it from the model.
    name: str | None
    #: Path of a GGUF file / HF directory, or a known hub id.
    ref: str

    def __str__(self) -> str:
        return f"{self.name}={self.ref}" if self.name else self.ref


def parse_model_ref(text: str) -> ModelRef:
    """``NAME=REF`` or ``REF``; an existing file named with ``=`` is a path, not a name."""
    text = text.strip()
    name, sep, ref = text.partition("=")
    if not sep or Path(text).expanduser().exists():
        if not text:
            raise ModelRefError("empty --model value")
        return ModelRef(None, text)
    if not MODEL_ID_PATTERN.fullmatch(name):
        if "/" in name or name.startswith((".", "~")):
            return ModelRef(None, text)  # a path that happens to contain "="
        raise ModelRefError(
            f"{name!r} (in {text!r}) is not a usable model id: use letters, digits "
            "and . _ : / + -, starting with a letter or digit, at most 200"
        )
    if not ref:
        raise ModelRefError(f"nothing after '=' in {text!r}; use NAME=PATH_OR_ID")
    return ModelRef(name, ref)


def resolve_models(
    values: Sequence[str], resolve: Callable[[str], ModelSpec] | None = None
) -> list[ModelSpec]:
    """Resolve every ``--model`` value; each spec's ``name`` is its public id.

    Raises :class:`ModelRefError` when two models would answer to the same id
    (compared case-insensitively: ``Smol`` and ``smol`` would confuse clients),
    and ``ModelNotFoundError`` for a reference that names no model.
    """
    if resolve is None:
        from outpost.runner.gguf_meta import resolve_model

        resolve = resolve_model
    specs: list[ModelSpec] = []
    seen: dict[str, str] = {}
    for value in values:
        ref = parse_model_ref(value)
        spec = resolve(ref.ref)
        if ref.name:
            spec = spec.model_copy(update={"name": ref.name})
        key = spec.name.lower()
        if key in seen:
            raise ModelRefError(
                f"model id {spec.name!r} is used twice (--model {seen[key]} and --model {value}); "
                f"give each its own id: --model NAME=PATH_OR_ID"
            )
        seen[key] = value
        specs.append(spec)
    return specs
