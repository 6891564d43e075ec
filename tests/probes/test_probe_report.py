"""The probe runner against scripted fake engines, and the reports it yields."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from rich.console import Console

from outpost.control_plane.probes import (
    ExpansionOptions,
    FairnessReport,
    ProbeRun,
    ProbeRunner,
    ProbeTarget,
    ReportSettings,
    SamplingSettings,
    build_report,
    builtin_suite,
    compare,
)
from outpost.control_plane.probes.extractors import ClassifierExtractor, LengthExtractor

from .fakes import FakeBiasedEngine, FakeEngine, FakeFlakyEngine

BASE_URL = "http://fake-engine.test/v1"
SAMPLING = SamplingSettings(temperature=0.0, top_p=0.9, max_tokens=64, seed=1234)


class FakeClock:
    """Advances one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def runner_for(engine: FakeEngine, **kwargs) -> ProbeRunner:
    kwargs.setdefault("show_progress", False)
    return ProbeRunner(
        ProbeTarget(base_url=BASE_URL, model="fake-model", engine=engine.name),
        "sk-probe-secret",
        sampling=SAMPLING,
        transport=engine.transport(),
        concurrency=4,
        clock=FakeClock(),
        **kwargs,
    )


@pytest.fixture(scope="module")
def suite():
    return builtin_suite()


async def test_biased_fake_engine_is_flagged_on_exactly_that_attribute(suite):
    engine = FakeBiasedEngine()
    run = await runner_for(engine).run(suite)
    report = build_report(run)
    assert report.flagged_attributes == ["religion"]
    refusal = report.attributes["religion"].outcomes["refusal"]
    assert refusal.groups["muslim"].value == 1.0
    di = refusal.disparate_impact
    assert di.flagged and di.lowest_group == "muslim" and di.ratio == 0.0
    assert di.ratio_below_threshold and di.significant and di.enough_samples
    versus = next(c for c in refusal.comparisons if c.groups == ("christian", "muslim"))
    assert versus.test == "mcnemar-chi2" and versus.p_holm < 1e-4
    assert versus.p_holm >= versus.p_value


async def test_unbiased_fake_engine_is_not_flagged(suite):
    run = await runner_for(FakeEngine()).run(suite)
    report = build_report(run)
    assert report.flagged_attributes == []
    refusal = report.attributes["religion"].outcomes["refusal"]
    assert 0 < refusal.groups["muslim"].value < 0.3, "the fake has background refusals"
    assert all(
        not c.significant
        for o in report.attributes["religion"].outcomes.values()
        for c in o.comparisons
        if o.spec.name == "refusal"
    )


async def test_run_records_settings_and_sends_them(suite):
    engine = FakeEngine()
    options = ExpansionOptions(max_prompts_per_group=3, attributes=["gender", "age"])
    run = await runner_for(engine).run(suite, options)
    assert len(run.responses) == 3 * 2 + 3 * 3 == len(engine.requests)
    body = engine.requests[0]["body"]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        0.0,
        0.9,
        64,
        1234,
    )
    assert body["model"] == "fake-model" and body["stream"] is False
    assert engine.requests[0]["headers"]["authorization"] == "Bearer sk-probe-secret"
    assert run.sampling == SAMPLING and run.expansion == options
    assert run.suite_id == "default" and run.suite_version == "1"
    assert run.started_at < run.finished_at
    assert run.responses[0].completion_tokens == 12
    assert "sk-probe-secret" not in run.model_dump_json()
    restored = ProbeRun.model_validate_json(run.model_dump_json())
    assert build_report(restored).to_dict() == build_report(run).to_dict()


async def test_errors_and_empty_answers_are_recorded_not_fatal(suite):
    engine = FakeFlakyEngine(fail="Emily,", empty="Sarah,", overloaded_once="James,")
    options = ExpansionOptions(attributes=["gender"])
    run = await runner_for(engine, retries=1, backoff_s=0.0).run(suite, options)
    statuses = {r.prompt.prompt_id: r.status for r in run.responses}
    assert len(statuses) == 98
    failed = [r for r in run.responses if r.status == "error"]
    assert failed and all("Emily," in r.prompt.text for r in failed)
    assert "HTTP 500: engine crashed" in failed[0].error
    empty = [r for r in run.responses if r.status == "empty"]
    assert empty and all(r.outcomes == {} for r in empty)
    assert all(r.status == "ok" for r in run.responses if "James," in r.prompt.text)
    report = build_report(run)
    counts = report.attributes["gender"].responses["female"]
    assert counts == {
        "ok": 49 - len(failed) - len(empty),
        "empty": len(empty),
        "error": len(failed),
    }
    assert report.attributes["gender"].outcomes["refusal"].groups["female"].n == counts["ok"]


async def test_transport_failures_are_recorded(suite):
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("fake engine is down", request=request)

    runner = ProbeRunner(
        ProbeTarget(base_url=BASE_URL, model="m"),
        "k",
        transport=httpx.MockTransport(broken),
        retries=0,
        show_progress=False,
    )
    run = await runner.run(suite, ExpansionOptions(max_prompts_per_group=2))
    assert run.count("error") == len(run.responses) > 0
    report = build_report(run)
    assert report.flagged_attributes == []
    assert all(
        c.p_value is None
        for a in report.attributes.values()
        for o in a.outcomes.values()
        for c in o.comparisons
    )


async def test_failing_classifier_does_not_lose_the_run(suite):
    class BrokenFakeClassifier:
        def predict(self, texts: list[str]) -> list[float]:
            raise RuntimeError("classifier service down")

    extractors = [LengthExtractor(), ClassifierExtractor("toxicity", BrokenFakeClassifier())]
    run = await runner_for(FakeEngine(), extractors=extractors).run(
        suite, ExpansionOptions(max_prompts_per_group=2, attributes=["age"])
    )
    assert "classifier service down" in run.extractor_errors["toxicity"]
    report = build_report(run)
    assert report.attributes["age"].outcomes["toxicity"].groups["young"].unparseable == 2
    assert report.attributes["age"].outcomes["length_words"].groups["young"].n == 2


async def test_min_group_n_blocks_the_flag_on_small_runs(suite):
    run = await runner_for(FakeBiasedEngine()).run(
        suite, ExpansionOptions(max_prompts_per_group=20, attributes=["religion"])
    )
    di = build_report(run).attributes["religion"].outcomes["refusal"].disparate_impact
    assert di.ratio_below_threshold and di.significant and not di.enough_samples
    assert not di.flagged
    loose = build_report(run, ReportSettings(min_group_n=20))
    assert loose.flagged_attributes == ["religion"]


async def test_report_json_rich_table_progress_and_compare(suite):
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False)
    biased = await runner_for(FakeBiasedEngine(), console=console, show_progress=True).run(suite)
    unbiased = await runner_for(FakeEngine()).run(suite)
    reports = [build_report(biased), build_report(unbiased)]

    data = reports[0].to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert FairnessReport.model_validate(data) == reports[0]
    assert data["suite_hash"] == biased.suite_hash

    console.print(reports[0].to_renderable())
    text = buffer.getvalue()
    assert "flagged attributes: religion" in text and "FLAG" in text

    comparison = compare([data, reports[1]])
    assert comparison.same_suite
    assert comparison.labels == [
        "fake-model @ fake-biased-against-muslims",
        "fake-model @ fake-unbiased",
    ]
    row = next(r for r in comparison.rows if (r.attribute, r.outcome) == ("religion", "refusal"))
    assert row.flagged == [True, False]
    assert row.groups["muslim"][0] == 1.0 and row.groups["muslim"][1] < 0.3
    json.dumps(comparison.to_dict(), allow_nan=False)
    console.print(comparison.to_renderable())
    assert "side by side" in buffer.getvalue()
    with pytest.raises(ValueError):
        compare(reports[:1])
