"""The offline audit verifier on random and mutated exports: a typed result, never an exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.sdk.audit import VerifyResult, verify_export

KEY = "11qYAYKxCrfVS_7TyWQHOg7hcvPcW0Al3vGFwXU3qhI"  # any 32-byte base64url string
HASH = "ab" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

#: Lines that look like the export's kinds, with fields of any type.
record = st.fixed_dictionaries(
    {"kind": st.sampled_from(["event", "checkpoint", "key", "redacted", "rotation", "other"])},
    optional={
        "seq": st.one_of(st.integers(-2, 2**64), st.text(max_size=3), st.none()),
        "hash": st.one_of(st.just(HASH), st.text(max_size=70)),
        "prev_hash": st.one_of(st.just("0" * 64), st.just(HASH), st.integers()),
        "event": st.one_of(json_values, st.fixed_dictionaries({"seq": st.integers(0, 3)})),
        "public_key": st.one_of(st.just(KEY), st.text(max_size=50), st.integers()),
        "key_id": st.one_of(st.text(max_size=32), st.none()),
        "signature": st.one_of(st.text(max_size=90), st.binary(max_size=8).map(repr)),
        "ts": st.one_of(st.text(max_size=30), st.integers()),
        "digest": st.one_of(st.just(HASH), st.text(max_size=70)),
    },
)

lines = st.lists(
    st.one_of(
        record.map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=40),
        st.binary(max_size=40),
        record,
    ),
    max_size=8,
)


def _check(result: object) -> None:
    assert isinstance(result, VerifyResult)
    if not result.ok:
        assert result.reason


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=lines, keys=st.lists(st.one_of(st.just(KEY), st.text(max_size=50)), max_size=2))
def test_random_exports_give_a_typed_result(lines: list, keys: list[str]) -> None:
    _check(verify_export(lines, keys))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_real_export_is_refused_or_still_valid(data: st.DataObject) -> None:
    from tests.security._audit_sample import sample_export  # a real signed chain, built once

    exported, pins = sample_export()
    mutated = list(exported)
    i = data.draw(st.integers(0, len(mutated) - 1))
    line = mutated[i]
    how = data.draw(st.sampled_from(["flip", "truncate", "drop", "dup", "swap", "field"]))
    if how == "flip":
        j = data.draw(st.integers(0, len(line) - 1))
        mutated[i] = line[:j] + data.draw(st.characters(codec="utf-8")) + line[j + 1 :]
    elif how == "truncate":
        mutated[i] = line[: data.draw(st.integers(0, len(line) - 1))]
    elif how == "drop":
        del mutated[i]
    elif how == "dup":
        mutated.insert(i, line)
    elif how == "swap":
        j = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i], mutated[j] = mutated[j], mutated[i]
    else:
        obj = json.loads(line)
        obj[data.draw(st.sampled_from(sorted(obj)))] = data.draw(json_values)
        mutated[i] = json.dumps(obj)
    result = verify_export(mutated, pins)
    _check(result)
    signed = json.loads(line)["kind"] in {
        "event",
        "checkpoint",
        "redacted",
    }  # header/key lines: unsigned
    if signed and mutated != exported and how in {"flip", "field", "truncate"} and result.ok:
        # A change to a signed line that the verifier accepts must not change what the export says.
        assert [json.loads(x) for x in mutated] == [json.loads(x) for x in exported]
