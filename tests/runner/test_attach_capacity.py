"""``--parallel`` with ``--attach``: the attached engine's concurrency is what the runner
advertises."""

from __future__ import annotations

from outpost.runner.hardware import detect
from outpost.runner.planning import ATTACH_CAPACITY, Overrides, plan
from tests.runner.fakes import probes


def test_parallel_sets_the_capacity_of_an_attached_engine() -> None:
    hw = detect(probes())
    url = "http://127.0.0.1:8000"
    assert plan(hw, None, attach_url=url, installed=set()).capacity == ATTACH_CAPACITY
    assert (
        plan(hw, None, attach_url=url, installed=set(), overrides=Overrides(parallel=64)).capacity
        == 64
    )
    assert (
        plan(hw, None, attach_url=url, installed=set(), overrides=Overrides()).capacity
        == ATTACH_CAPACITY
    )
