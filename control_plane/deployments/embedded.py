"""``control-plane up``: the embedded model, linked into the local runner's model directory.

So that a user of a fresh ``./scripts/up`` can deploy the embedded model again under another
name from the console (a ``path`` source, ``embedded/<file>.gguf``) without touching the
runner's machine (issue 22). The control plane never imports the runner (import-linter's
contract): the runner's own code says where its embedded model is, in a child process.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

__all__ = ["EMBEDDED_DIR", "link_embedded_model"]

log = logging.getLogger("outpost.deployments")

#: The folder of the model directory the link goes in.
EMBEDDED_DIR = "embedded"
_ASK = "from outpost.runner.models import embedded_model_path as p; print(p())"


def link_embedded_model(models_dir: Path) -> Path | None:
    """Link the embedded GGUF into ``models_dir/embedded/``; returns the link, or None when
    no embedded model is installed (nothing to link)."""
    try:
        found = subprocess.run(
            [sys.executable, "-c", _ASK], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("embedded model not linked: %s", exc)
        return None
    if found.returncode != 0 or not found.stdout.strip():
        return None
    target = Path(found.stdout.strip().splitlines()[-1])
    link = models_dir / EMBEDDED_DIR / target.name
    link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if link.is_symlink() and link.resolve() != target.resolve():
        link.unlink()  # the package moved (a reinstall): point at the current file
    if not link.exists():
        link.symlink_to(target)
    return link
