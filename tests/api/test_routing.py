"""The router on simulated runners: eligibility, policies, prefix affinity with bounded load."""

from __future__ import annotations

import pytest

from harness.sim import MODEL, set_status, simulated_runner
from outpost.control_plane.openai.protocol import ChatCompletionRequest, CompletionRequest
from outpost.control_plane.routing.affinity import AffinityTable, affinity_keys
from outpost.control_plane.routing.routing import (
    Router,
    RouterConfig,
    RouteRequest,
    bounded_load_ok,
    rank,
    residency_allows,
    usd_per_hour,
)


def ids(decision) -> list[str]:
    return [r.runner_id for r in decision.runners]


def chat(*turns: tuple[str, str], model: str = MODEL) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model=model, messages=[{"role": r, "content": c} for r, c in turns]
    )


# --- eligibility -------------------------------------------------------------------


def test_residency_rules_fail_closed() -> None:
    rules = {"region": ["eu", "ch"]}
    assert residency_allows({"region": "eu"}, rules)
    assert not residency_allows({"region": "us"}, rules)
    assert not residency_allows({}, rules), "a runner without the label must not pass"
    assert residency_allows({}, {}), "no rules: every runner"
    assert not residency_allows({"region": "eu", "zone": "b"}, {"region": ["eu"], "zone": ["a"]})


def test_ineligible_runners_are_excluded_with_reasons() -> None:
    eu = simulated_runner("eu", labels={"region": "eu"})
    us = simulated_runner("us", labels={"region": "us"})
    sick = simulated_runner("sick", labels={"region": "eu"})
    set_status(sick, healthy=False)
    draining = simulated_runner("draining", labels={"region": "eu"})
    draining.links[0].draining = True
    other = simulated_runner("other", model="another-model", labels={"region": "eu"})
    decision = Router().route(
        [eu, us, sick, draining, other], RouteRequest(model=MODEL, residency={"region": ["eu"]})
    )
    assert ids(decision) == ["eu"]
    assert decision.excluded == {"us": "residency", "sick": "unhealthy", "draining": "draining"}


def test_alias_is_served_and_endpoint_capability_is_checked() -> None:
    a = simulated_runner("a", model="smollm2-135m", aliases=("team-chat",))
    b = simulated_runner(
        "b",
        model="qwen-0.5b",
        aliases=("team-chat",),
        engine="vllm",
        endpoints=("chat", "completions", "embeddings"),
    )
    router = Router()
    assert sorted(ids(router.route([a, b], RouteRequest(model="team-chat")))) == ["a", "b"]
    decision = router.route([a, b], RouteRequest(model="team-chat", endpoint="embeddings"))
    assert ids(decision) == ["b"] and decision.excluded == {"a": "endpoint"}


# --- policies --------------------------------------------------------------------------


def test_cost_policy_picks_cheapest_eligible_runner() -> None:
    runners = [
        simulated_runner("gpu", usd_per_hour=2.99, labels={"region": "us"}),
        simulated_runner("cheap-us", usd_per_hour=0.10, labels={"region": "us"}),
        simulated_runner("mid-eu", usd_per_hour=0.80, labels={"region": "eu"}),
        simulated_runner("cheap-eu", usd_per_hour=0.30, labels={"region": "eu"}),
    ]
    router = Router()
    assert ids(router.route(runners, RouteRequest(model=MODEL, policy="cost"))) == [
        "cheap-us",
        "cheap-eu",
        "mid-eu",
        "gpu",
    ]
    eu_only = router.route(
        runners, RouteRequest(model=MODEL, policy="cost", residency={"region": ["eu"]})
    )
    assert ids(eu_only) == ["cheap-eu", "mid-eu"]


def test_cost_policy_prefers_cheap_even_when_busy_but_breaks_price_ties_by_load() -> None:
    cheap_busy = simulated_runner("cheap-busy", usd_per_hour=0.10, in_flight=4)
    cheap_idle = simulated_runner("cheap-idle", usd_per_hour=0.102)  # within 5 %: a tie
    dear = simulated_runner("dear", usd_per_hour=3.0)
    decision = Router().route(
        [cheap_busy, cheap_idle, dear], RouteRequest(model=MODEL, policy="cost")
    )
    assert ids(decision) == ["cheap-idle", "cheap-busy", "dear"]


def test_latency_policy_avoids_a_loaded_runner() -> None:
    busy = simulated_runner("a-busy", in_flight=3)
    idle = simulated_runner("b-idle")
    assert (
        ids(Router().route([busy, idle], RouteRequest(model=MODEL, policy="latency")))[0]
        == "b-idle"
    )


def test_latency_policy_reads_load_from_status_frames() -> None:
    # Requests from another control-plane replica show only in the runner's status frame.
    elsewhere = simulated_runner("a")
    set_status(elsewhere, running=4, waiting=3)
    idle = simulated_runner("b")
    decision = Router().route([elsewhere, idle], RouteRequest(model=MODEL, policy="latency"))
    assert ids(decision) == ["b", "a"]
    assert decision.candidates[1].estimate.wait_s > 0, "a full runner makes the request queue"


def test_a_stale_status_frame_does_not_count_our_finished_requests() -> None:
    router = Router()
    a, b = simulated_runner("a"), simulated_runner("b")
    for _ in range(4):
        router.started(a)
    router.started(b)
    set_status(a, running=4)  # reported while our four requests ran
    set_status(b, running=1)
    for _ in range(4):  # they finish before the router looks again; the next report is ~2 s away
        router.finished(a)
    decision = router.route([a, b], RouteRequest(model=MODEL, policy="latency"))
    assert ids(decision)[0] == "a" and decision.candidates[0].estimate.load == 0
    set_status(b, running=5)  # a new report: four requests from another replica
    assert router.route([a, b], RouteRequest(model=MODEL)).candidates[1].estimate.load == 5
    router.started(a)
    set_status(a, running=1)
    assert router.route([a, b], RouteRequest(model=MODEL)).candidates[0].estimate.load == 1


def test_a_report_lagging_behind_our_own_finished_request_adds_nothing() -> None:
    # The engine's metrics are polled every 2 s: a report can still show a
    # request of ours that finished before the report was sent.
    router = Router()
    a, b = simulated_runner("a", capacity=1), simulated_runner("b", capacity=1)
    router.started(a)
    router.finished(a)
    set_status(a, running=1)
    decision = router.route([a, b], RouteRequest(model=MODEL, affinity_keys=("conv",)))
    assert [c.estimate.load for c in decision.candidates] == [0, 0]


def test_latency_policy_avoids_a_nearly_full_kv_cache() -> None:
    full = simulated_runner("a")
    set_status(full, running=1, kv=0.99)
    roomy = simulated_runner("b")
    set_status(roomy, running=1, kv=0.2)
    assert ids(Router().route([full, roomy], RouteRequest(model=MODEL, policy="latency")))[0] == "b"


def test_latency_policy_learns_runner_speed() -> None:
    slow, fast = simulated_runner("a-slow"), simulated_runner("b-fast")
    router = Router()
    for _ in range(3):
        router.observe(
            "a-slow",
            prompt_tokens=100,
            completion_tokens=101,
            ttft_s=1.0,
            total_s=11.0,
            queued=False,
            streamed=True,
        )
        router.observe(
            "b-fast",
            prompt_tokens=100,
            completion_tokens=101,
            ttft_s=0.1,
            total_s=1.1,
            queued=False,
            streamed=True,
        )
    assert router.stats["b-fast"].decode_tps == pytest.approx(100.0)
    assert router.stats["b-fast"].prefill_tps == pytest.approx(1000.0), (
        "10x decode, never from TTFT"
    )
    assert ids(router.route([slow, fast], RouteRequest(model=MODEL, policy="latency"))) == [
        "b-fast",
        "a-slow",
    ]
    # Ten times faster: worth a short queue (three rounds), not a long one (ten).
    fast.in_flight = 12
    assert (
        ids(router.route([slow, fast], RouteRequest(model=MODEL, policy="latency")))[0] == "b-fast"
    )
    fast.in_flight = 40
    assert (
        ids(router.route([slow, fast], RouteRequest(model=MODEL, policy="latency")))[0] == "a-slow"
    )


def test_unstreamed_answers_do_not_make_a_runner_look_infinitely_fast() -> None:
    # Without streaming the "first byte" is the whole answer: TTFT = total time.
    router = Router()
    router.observe(
        "a",
        prompt_tokens=20,
        completion_tokens=4,
        ttft_s=0.30,
        total_s=0.3001,
        queued=False,
        streamed=False,
    )
    assert router.stats["a"].decode_tps == pytest.approx(
        4 / (0.3001 - 20 / 200), rel=1e-3
    )  # 20 tok/s
    router.observe(
        "a",
        prompt_tokens=20,
        completion_tokens=4,
        ttft_s=2.0,
        total_s=2.0,
        queued=True,
        streamed=False,
    )
    assert router.stats["a"].observations == 1, "a queued unstreamed answer teaches nothing"


def test_balanced_policy_trades_price_against_wait() -> None:
    cheap = simulated_runner("cheap", usd_per_hour=0.5)
    dear = simulated_runner("dear", usd_per_hour=1.0)
    router = Router()
    req = RouteRequest(model=MODEL, policy="balanced")
    assert ids(router.route([cheap, dear], req))[0] == "cheap"
    cheap.in_flight = 8  # two rounds of queueing: three times the latency
    assert ids(router.route([cheap, dear], req))[0] == "dear"
    assert ids(router.route([cheap, dear], RouteRequest(model=MODEL, policy="cost")))[0] == "cheap"


def test_cost_models_from_hello() -> None:
    assert usd_per_hour({"usd_per_hour": 1.2}, 0.1) == 1.2
    assert usd_per_hour({"watts": 400, "usd_per_kwh": 0.25, "pue": 1.2}, 0.1) == pytest.approx(0.12)
    assert usd_per_hour({}, 0.1) == 0.1
    assert usd_per_hour({"usd_per_hour": "n/a"}, 0.1) == 0.1


def test_rank_is_deterministic_on_ties() -> None:
    runners = [simulated_runner(i) for i in ("c", "a", "b")]
    assert [
        c.runner.runner_id for c in rank(runners, RouteRequest(model=MODEL), {}, RouterConfig())
    ] == ["a", "b", "c"]


def test_round_robin_baseline_rotates() -> None:
    runners = [simulated_runner(i) for i in ("a", "b", "c")]
    router = Router(RouterConfig(strategy="round_robin"))
    firsts = [ids(router.route(runners, RouteRequest(model=MODEL)))[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


# --- prefix affinity -----------------------------------------------------------------------


def test_affinity_key_is_the_conversation_opening() -> None:
    turn1 = chat(("system", "You are terse."), ("user", "Plan a trip to Rome."))
    turn2 = chat(
        ("system", "You are terse."),
        ("user", "Plan a trip to Rome."),
        ("assistant", "Day 1: ..."),
        ("user", "Add a day in Florence."),
    )
    other = chat(("system", "You are terse."), ("user", "Plan a trip to Oslo."))
    assert affinity_keys("t1", turn1) == affinity_keys("t1", turn2)
    assert affinity_keys("t1", turn1) != affinity_keys("t1", other)
    assert affinity_keys("t1", turn1) != affinity_keys("t2", turn1), "tenants never share keys"
    explicit = ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": "x"}], prompt_cache_key="conv-42"
    )
    assert affinity_keys("t1", explicit) != affinity_keys("t1", chat(("user", "x")))


def test_completion_prompts_share_their_leading_blocks() -> None:
    history = "".join(
        f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(12)
    )
    turn1 = affinity_keys("t", CompletionRequest(model=MODEL, prompt=history))
    turn2 = affinity_keys("t", CompletionRequest(model=MODEL, prompt=history + "More text. " * 40))
    assert len(turn2) > len(turn1) >= 1
    assert turn1[0] in turn2, "turn 2 finds the longest block turn 1 left"


def test_multi_turn_conversations_return_to_the_same_runner() -> None:
    runners = [simulated_runner(i) for i in ("a", "b", "c", "d")]
    router = Router()
    histories = {
        c: [("system", "Be brief."), ("user", f"Conversation {c}: tell me about topic {c}.")]
        for c in range(8)
    }
    homes: dict[int, str] = {}
    for turn in range(4):
        for conv, history in histories.items():  # the conversations' turns overlap
            req = RouteRequest(
                model=MODEL, policy="latency", affinity_keys=affinity_keys("t", chat(*history))
            )
            decision = router.route(runners, req)
            chosen = decision.runners[0]
            chosen.in_flight += 1
            if turn == 0:
                assert decision.affinity == "miss"
                homes[conv] = chosen.runner_id
            else:
                assert (decision.affinity, chosen.runner_id) == ("hit", homes[conv]), (turn, conv)
            router.served(req, chosen.runner_id)
            history += [("assistant", f"Answer {turn}."), ("user", f"Follow-up {turn}?")]
        for r in runners:  # every turn answered
            r.in_flight = 0
    assert sorted(homes.values()) == ["a", "a", "b", "b", "c", "c", "d", "d"], (
        "new conversations spread out"
    )


def test_affinity_stops_when_its_runner_is_overloaded() -> None:
    runners = [simulated_runner(i) for i in ("a", "b", "c", "d")]
    router = Router(RouterConfig(affinity_epsilon=0.25))
    req = RouteRequest(model=MODEL, policy="latency", affinity_keys=("conv-1",))
    router.served(req, "a")
    runners[0].in_flight = 2  # others idle: bound = ceil(1.25 * 3 * 4 / 16) = 1
    decision = router.route(runners, req)
    assert decision.affinity == "overloaded" and ids(decision)[0] != "a"
    # As the others fill up, the mean rises and "a" is within bounds again.
    for r in runners[1:]:
        r.in_flight = 2
    decision = router.route(runners, req)
    assert decision.affinity == "hit" and ids(decision)[0] == "a"


def test_affinity_does_not_queue_while_another_runner_has_a_free_slot() -> None:
    runners = [simulated_runner("a", capacity=2), simulated_runner("b", capacity=2)]
    router = Router(RouterConfig(affinity_epsilon=3.0))  # a bound that alone would allow it
    req = RouteRequest(model=MODEL, policy="latency", affinity_keys=("conv",))
    router.served(req, "a")
    runners[0].in_flight = 2
    runners[1].in_flight = 1
    assert router.route(runners, req).affinity == "overloaded"
    runners[1].in_flight = 2  # everyone is full: the cache is worth the wait
    assert router.route(runners, req).affinity == "hit"


def test_bounded_load_limit() -> None:
    runners = [simulated_runner(i, capacity=4) for i in ("a", "b")]
    router = Router()
    cands = rank(runners, RouteRequest(model=MODEL), router.stats, router.config)
    a = next(c for c in cands if c.runner.runner_id == "a")
    assert bounded_load_ok(a, cands, 0.25), "an idle runner is always within bounds"
    runners[0].in_flight, runners[1].in_flight = 3, 3
    cands = rank(runners, RouteRequest(model=MODEL), router.stats, router.config)
    a = next(c for c in cands if c.runner.runner_id == "a")
    assert bounded_load_ok(a, cands, 0.25)  # 4 <= ceil(1.25 * 7 / 2) = 5
    runners[0].in_flight = 7
    cands = rank(runners, RouteRequest(model=MODEL), router.stats, router.config)
    a = next(c for c in cands if c.runner.runner_id == "a")
    assert not bounded_load_ok(a, cands, 0.25)  # 8 > ceil(1.25 * 11 / 2) = 7


def test_affinity_entries_expire_and_are_bounded() -> None:
    now = [0.0]
    table = AffinityTable(ttl_s=10, max_entries=2, clock=lambda: now[0])
    table.remember(["k1"], "a")
    table.remember(["k2"], "b")
    assert table.lookup(["k1"]) == "a"
    now[0] = 11
    assert table.lookup(["k1"]) is None, "the engine has most likely evicted the prefix by now"
    table.remember(["k3"], "c")
    table.remember(["k4"], "d")
    assert len(table) == 2 and table.lookup(["k4", "k3"]) == "d"


def test_affinity_can_be_switched_off() -> None:
    runners = [simulated_runner(i) for i in ("a", "b")]
    router = Router(RouterConfig(affinity=False))
    req = RouteRequest(model=MODEL, affinity_keys=("k",))
    router.served(req, "b")
    decision = router.route(runners, req)
    assert decision.affinity == "off" and ids(decision)[0] == "a"
