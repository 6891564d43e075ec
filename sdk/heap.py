"""A long-running process's start-up heap, kept out of the cyclic garbage collector's way.

After its imports (FastAPI, pydantic, SQLAlchemy, …) and start-up, the control
plane holds about half a million objects that live as long as the process.
CPython's collector walks all of them at every full collection: under the
256-stream relay benchmark that was 0.46 s per full collection (nine in a
run) on the 2-core VM, and the garbage collector as a whole took about half
of the control plane's CPU, each full pass stopping every stream
(docs/performance.md, "The relay at GPU rates on 2 cores"). Freezing the
heap once start-up is done moves those objects to the permanent generation
(:func:`gc.freeze`, as Instagram's servers do), so collections walk only
what was allocated since: the requests and streams in flight.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """Collect once, then exclude every object alive now from later collections."""
    gc.collect()
    gc.freeze()
