"""A deployment's engine choice and options → the runner's planner, in what is left of the machine.

The planner is the one ``runner plan`` prints (runner/planning.py). A replica
is planned in the memory that the runner's own models and its other replicas
leave (runner/multiplan.py's ``remaining_after``), so a model that does not fit
is refused before anything is loaded, with the planner's reason.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from outpost.runner.gguf_meta import ModelSpec
from outpost.runner.hardware import HardwareReport
from outpost.runner.multiplan import remaining_after
from outpost.runner.planning import (
    DEFAULT_HEADROOM,
    ENGINES,
    MAX_SLOTS_GPU,
    Overrides,
    Plan,
    installed_engines,
    plan,
)

__all__ = ["ENGINE_OPTIONS", "OptionError", "engine_for", "overrides_from", "plan_replica"]

#: The engine options a deploy frame may set, with their ranges: the planner's own
#: overrides, nothing passed to an engine's command line unchecked. Anything else is refused.
ENGINE_OPTIONS: dict[str, tuple[int, int]] = {
    "ctx": (256, 2**27),  # total context, as --ctx
    "parallel": (1, MAX_SLOTS_GPU * 16),  # slots the control plane may fill, as --parallel
    "threads": (0, 1024),  # engine CPU threads, 0: the engine's default
    "headroom": (0, 8),  # fair-headroom slots, as --headroom
}

_LLAMA_CPP = ("xllamacpp", "llama-cpp-python")


class OptionError(ValueError):
    """An engine option or engine choice this runner does not take; the message says why."""


def overrides_from(options: Mapping[str, object]) -> Overrides:
    """Checked engine options → planner overrides."""
    values: dict[str, int] = {}
    for key, value in options.items():
        if key not in ENGINE_OPTIONS:
            raise OptionError(
                f"unknown engine option {key!r} (this runner takes: {', '.join(ENGINE_OPTIONS)})"
            )
        low, high = ENGINE_OPTIONS[key]
        # bool is an int to Python; an option that is a count takes a JSON integer only.
        if type(value) is not int or not low <= value <= high:
            raise OptionError(f"engine option {key!r} must be an integer in [{low}, {high}]")
        values[key] = value
    return Overrides(
        parallel=values.get("parallel"),
        ctx=values.get("ctx"),
        threads=values.get("threads") or None,
        headroom=values.get("headroom", DEFAULT_HEADROOM),
    )


def engine_for(choice: str, installed: Collection[str] | None = None) -> str | None:
    """The planner's engine for a deploy frame's ``engine``: None lets the planner choose."""
    have = installed_engines() if installed is None else frozenset(installed)
    if choice == "auto":
        return None
    if choice == "vllm":
        return "vllm"
    if choice == "llama.cpp":
        # The binding that serves several requests at once comes first, as in ENGINES.
        for name in ENGINES:
            if name in _LLAMA_CPP and name in have:
                return name
        return "xllamacpp"  # not installed: the planner's refusal says so
    raise OptionError(f"unknown engine {choice!r}")


def plan_replica(
    hardware: HardwareReport,
    held: Iterable[Plan],
    model: ModelSpec,
    engine: str | None,
    overrides: Overrides,
    installed: Collection[str] | None = None,
) -> Plan:
    """Plan ``model`` in what the plans in ``held`` leave of ``hardware``."""
    left = hardware
    names = []
    for p in held:
        left = remaining_after(left, p)
        if p.model is not None:
            names.append(p.model.name)
    result = plan(left, model, engine=engine, installed=installed, overrides=overrides)
    if result.refusal and names:
        result = result.model_copy(
            update={"refusal": f"{result.refusal} (beside {', '.join(names)} on this runner)"}
        )
    return result
