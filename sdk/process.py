"""Process lifetime every Outpost process shares: a child dies with its parent.

The runner starts its engines with it, and ``control-plane up`` starts its
runner with it; it lives here, in the shared layer, so neither imports the
other (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here, in the parent: the child between fork and exec should do no more than call
        # it.
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the child when its parent dies.

    ``None`` where the platform has no such thing (not Linux): the start-up sweep
    of the runner's ``EngineRegistry`` is then the only guarantee.
    """
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), int(sig))

    return preexec
