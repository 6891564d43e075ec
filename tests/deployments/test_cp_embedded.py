"""``control-plane up`` links the embedded model into the local runner's model directory, so a
fresh install can deploy it again under another name without touching the runner's machine."""

from __future__ import annotations

from pathlib import Path

from outpost.control_plane.deployments.embedded import link_embedded_model
from outpost.runner.models import embedded_model_path


def test_the_embedded_model_is_linked_once_and_repointed(tmp_path: Path) -> None:
    models = tmp_path / "runner" / "models"
    link = link_embedded_model(models)
    assert link is not None and link.parent == models / "embedded"
    assert link.resolve() == embedded_model_path().resolve()
    # Relative to the model directory, as a path source names it; a second call keeps it.
    assert link.relative_to(models).as_posix() == f"embedded/{embedded_model_path().name}"
    assert link_embedded_model(models) == link
    # A stale link (the package reinstalled elsewhere) is pointed at the current file.
    link.unlink()
    link.symlink_to(tmp_path / "gone.gguf")
    assert link_embedded_model(models) == link and link.resolve() == embedded_model_path().resolve()
