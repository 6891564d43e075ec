"""Puts this checkout's root on ``sys.path`` for a bench script run as ``python bench/x.py``.

Such a script starts with bench/ as ``sys.path[0]``, so it finds this module; importing it
before the others lets ``harness`` and ``bench`` (packages at the root) import from the
checkout while every import stays at the top of the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["ROOT"]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
