"""The shared cost contract (sdk/pricing.py): one $/hour rule for routing and pricing, and the
hello's wire form."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from outpost.control_plane.routing.routing import usd_per_hour
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.sdk.hardware import CpuInfo, HardwareReport
from outpost.sdk.pricing import DEFAULT_USD_PER_HOUR, CostModel, hourly_rate
from outpost.sdk.protocol import HelloFrame, encode_frame, parse_frame

ROOT = Path(__file__).resolve().parents[2]

MODELS = [
    CostModel(usd_per_hour=2.5),
    CostModel(kind="power", watts=500, usd_per_kwh=0.2, pue=1.5),
    CostModel(kind="power", watts=500, usd_per_kwh=0.2, pue=0.5),  # a PUE below 1 counts as 1
    CostModel(hardware_class="nvidia-h100", count=8),
    CostModel(hardware_class="a-future-class", count=8),
    CostModel(),
    CostModel(usd_per_hour=1.0, set_by="owner"),
]


@pytest.mark.parametrize("cost", MODELS, ids=lambda c: json.dumps(c.to_dict()))
def test_routing_and_pricing_read_one_rate(cost: CostModel) -> None:
    runner = ConnectedRunner(
        runner_id="r", tenant_id="t", name="r", models=[], capacity=1, cost=cost
    )
    assert usd_per_hour(cost, DEFAULT_USD_PER_HOUR["cpu-small"]) == hourly_rate(cost)
    assert runner.usd_per_second * 3600 == pytest.approx(hourly_rate(cost))


def test_the_rules_in_order() -> None:
    assert [hourly_rate(c) for c in MODELS] == pytest.approx(
        [2.5, 0.15, 0.1, 8 * DEFAULT_USD_PER_HOUR["nvidia-h100"], 0.10, 0.10, 1.0]
    )
    assert hourly_rate(CostModel(), default=0.5) == 0.5  # routing's configured default


@pytest.mark.parametrize(
    ("stored", "rate"),
    [
        ({"usd_per_hour": math.inf, "watts": 100, "usd_per_kwh": 1.0}, 0.1),
        ({"usd_per_hour": "lots", "hardware_class": "nvidia-l4"}, 0.8),
        ({"usd_per_hour": True}, 0.1),
        ({"usd_per_hour": 3.0, "legacy_field": 1, "set_by": "owner"}, 3.0),
        ({"count": "8", "hardware_class": "nvidia-l4"}, 0.8),
        (None, 0.1),
    ],
)
def test_a_stored_mapping_drops_what_does_not_validate(stored: dict | None, rate: float) -> None:
    assert hourly_rate(CostModel.from_mapping(stored)) == pytest.approx(rate)


def test_the_hello_wire_form_is_what_an_older_control_plane_accepts() -> None:
    # Before the typed models a receiver took ``cost`` and ``hardware`` as JSON objects:
    # unset cost fields are left out and a missing report goes out as {}.
    hello = HelloFrame(runner_id="r", version=1, signature="s", cost=CostModel(usd_per_hour=1.5))
    wire = json.loads(encode_frame(hello))
    assert wire["cost"] == {"usd_per_hour": 1.5} and wire["hardware"] == {}
    assert parse_frame(encode_frame(hello)) == hello
    report = HardwareReport(cpu=CpuInfo.unknown())
    typed = HelloFrame(runner_id="r", version=1, signature="s", hardware=report)
    assert parse_frame(encode_frame(typed)).hardware == report


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else ([a.name for a in node.names] if isinstance(node, ast.Import) else [])
            )
            found |= {(str(path.relative_to(ROOT)), n.split(".")[0]) for n in names}
    return found


def test_runner_and_control_plane_share_only_sdk() -> None:
    crossings = {(path, top) for path, top in _imports("runner") if top == "control_plane"}
    crossings |= {(path, top) for path, top in _imports("control_plane") if top == "runner"}
    crossings |= {
        (path, top) for path, top in _imports("sdk") if top in ("runner", "control_plane")
    }
    assert not crossings, crossings
