"""Outpost: run LLMs on your own hardware, reach them through one OpenAI-compatible API.

The distribution installs one top-level name. Its parts live in folders of their own at the top
of the repository and are installed beneath this package (setup.py maps ``outpost.sdk`` to
``sdk/`` and so on): ``outpost.sdk`` (the client and the shared tunnel contract),
``outpost.runner``, ``outpost.control_plane``, ``outpost.web`` and ``outpost.migrations``.

``from outpost import Client`` is the client's short name. It is imported on first use, so
``import outpost.control_plane`` does not pay for the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outpost.sdk.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from outpost.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'outpost' has no attribute {name!r}")
