"""The one interface every engine adapter implements.

An adapter knows how to start its engine (argv and environment), where to
probe health, how much concurrency to advertise and how to read live load
from the engine's metrics. It performs no I/O itself: the supervisor spawns
and watches processes, the tunnel relays HTTP. That keeps adapters testable
against recorded data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["EngineAdapter", "EngineLoad", "LaunchSpec", "ServedModel"]


@dataclass(frozen=True)
class ServedModel:
    """A model as the runner advertises it to the control plane."""

    name: str  # public name clients use
    engine: str
    context_length: int | None = None
    quantization: str | None = None
    aliases: tuple[str, ...] = ()
    # OpenAI endpoints the engine answers for this model.
    endpoints: tuple[str, ...] = ("chat", "completions")


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    #: Counters since the engine started, where its metrics have them (None: not reported).
    #: Requests it answered to the end (aborted and failed ones excluded), and tokens in and out.
    requests_finished: int | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None


class EngineAdapter(Protocol):
    name: str
    #: Requests the engine serves at once; the control plane admits no more.
    capacity: int
    #: Of those, slots kept for tenants with nothing in flight (fair headroom):
    #: the runner advertises ``capacity - headroom`` and the headroom apart.
    headroom: int
    models: tuple[ServedModel, ...]

    def launch_spec(self, port: int) -> LaunchSpec | None:
        """How to start the engine on ``port``; ``None`` when attached (not managed)."""

    def base_url(self, port: int | None) -> str:
        """Root URL of the engine's OpenAI-compatible API."""

    @property
    def health_path(self) -> str:
        """Readiness: answers 200 once the model is loaded (polled while the engine starts)."""

    @property
    def liveness_path(self) -> str:
        """Checked every few seconds while the engine runs; must answer promptly even while
        every slot is busy, or a long generation would read as a hang."""

    def parse_metrics(self, text: str) -> EngineLoad:
        """Live load from the engine's Prometheus text (empty text → zero load)."""
