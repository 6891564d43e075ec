"""A runner's price: the hardware classes, their default tables, the cost model, and $/hour.

Shared by the runner (which proposes a cost model in its hello), the control
plane (which stores the owner-set one on the runner's row) and routing and
billing (which both turn it into $/hour with :func:`hourly_rate`, one rule for
everybody). docs/cost.md gives the source of every default number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeGuard, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DEFAULT_TDP_WATTS",
    "DEFAULT_USD_PER_HOUR",
    "HARDWARE_CLASSES",
    "MAX_COST_NUMBER",
    "CostModel",
    "HardwareClass",
    "hourly_rate",
    "is_hardware_class",
]

HardwareClass = Literal[
    "cpu-small",
    "cpu-large",
    "nvidia-consumer-24gb",
    "nvidia-l4",
    "nvidia-a100-40gb",
    "nvidia-a100-80gb",
    "nvidia-h100",
    "nvidia-h200",
]
HARDWARE_CLASSES: Final[tuple[HardwareClass, ...]] = get_args(HardwareClass)

# Per machine (CPU classes) or per GPU (GPU classes); sources in docs/cost.md.
DEFAULT_USD_PER_HOUR: Final[Mapping[HardwareClass, float]] = {
    "cpu-small": 0.10,
    "cpu-large": 1.61,
    "nvidia-consumer-24gb": 0.50,
    "nvidia-l4": 0.80,
    "nvidia-a100-40gb": 1.29,
    "nvidia-a100-80gb": 1.79,
    "nvidia-h100": 2.99,
    "nvidia-h200": 3.79,
}

# Board/package power limits from vendor data sheets: the fallback when no
# power counter is readable. Sources in docs/cost.md.
DEFAULT_TDP_WATTS: Final[Mapping[HardwareClass, float]] = {
    "cpu-small": 65.0,
    "cpu-large": 350.0,
    "nvidia-consumer-24gb": 450.0,
    "nvidia-l4": 72.0,
    "nvidia-a100-40gb": 400.0,
    "nvidia-a100-80gb": 400.0,
    "nvidia-h100": 700.0,
    "nvidia-h200": 700.0,
}

#: The largest number a cost model may hold ($/hour, watts, $/kWh, PUE): far
#: above any real machine, small enough that products of them stay finite.
MAX_COST_NUMBER: Final = 1e6

_Number = Annotated[float, Field(strict=True, ge=0.0, le=MAX_COST_NUMBER, allow_inf_nan=False)]
_Label = Annotated[str, Field(min_length=1, max_length=64)]


class CostModel(BaseModel):
    """How a runner costs money: a flat rate, or electricity (watts x PUE x $/kWh).

    A hello proposes one (``runner/cost.py`` fills every field it knows); the
    control plane stores the owner-set one (``usd_per_hour`` and ``set_by``)
    on the runner's row. Every field is optional so the oldest hellos (no
    ``cost`` at all) and the stored rows read as the same type.
    """

    # A contract, not a bag: unknown fields are refused, numbers are finite and bounded.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["hourly", "power"] | None = None
    usd_per_hour: _Number | None = None
    usd_per_kwh: _Number | None = None
    watts: _Number | None = None
    # Power usage effectiveness; a value below 1 counts as 1 (no facility uses less than its IT
    # load).
    pue: _Number | None = None
    # A class this build does not know still connects (a newer runner) and is
    # priced as the cheapest class, so an unknown runner never looks expensive.
    hardware_class: _Label | None = None
    count: int | None = Field(default=None, ge=1, le=4096, strict=True)
    # Where the numbers came from, for the operator ("configured", "default", "tdp", ...).
    source: _Label | None = None
    watts_source: _Label | None = None
    # On a stored model: who set the price ("hello": proposed at first contact, "owner").
    set_by: Literal["hello", "owner"] | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> CostModel:
        """Read a stored or legacy mapping leniently: a field that does not validate is dropped.

        Rows written before the model was typed (and older replicas' registry
        entries) may hold anything; dropping a bad field makes it fall through
        to the next rule of :func:`hourly_rate`, as it always did.
        """
        fields = {k: v for k, v in (data or {}).items() if k in cls.model_fields}
        while True:
            try:
                return cls.model_validate(fields)
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
                if not bad & fields.keys():
                    return cls()
                fields = {k: v for k, v in fields.items() if k not in bad}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a hello's ``cost``, a row's ``cost`` column), unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


def is_hardware_class(name: str | None) -> TypeGuard[HardwareClass]:
    return name in HARDWARE_CLASSES


def hourly_rate(cost: CostModel | Mapping[str, Any], default: float | None = None) -> float:
    """$/hour of a runner from its cost model: the one rule of routing and billing.

    In order: a stated ``usd_per_hour``; ``watts`` x ``pue`` x ``usd_per_kwh``;
    the default of its ``hardware_class`` x ``count``; else ``default`` (by
    default ``cpu-small``'s rate, the cheapest class, so an unknown runner
    never looks expensive enough to be avoided). A mapping is read with
    :meth:`CostModel.from_mapping`.
    """
    if not isinstance(cost, CostModel):
        cost = CostModel.from_mapping(cost)
    if cost.usd_per_hour is not None:
        return cost.usd_per_hour
    if cost.watts is not None and cost.usd_per_kwh is not None:
        rate = cost.watts * max(cost.pue or 1.0, 1.0) * cost.usd_per_kwh / 1000.0
        if math.isfinite(rate):  # bounded inputs keep it finite; a second line for rankings
            return rate
    if is_hardware_class(cost.hardware_class):
        return DEFAULT_USD_PER_HOUR[cost.hardware_class] * (cost.count or 1)
    return DEFAULT_USD_PER_HOUR["cpu-small"] if default is None else default
