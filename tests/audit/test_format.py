"""The canonical encoding and the chain step, pinned to their written definitions."""

from __future__ import annotations

import hashlib

import pytest

from outpost.sdk.audit import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    checkpoint_message,
    event_digest,
    key_id_for,
)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": 1, "a": {"z": [True, None, "é"], "y": -2}, "A": "x"}
    assert canonical_json(value) == '{"A":"x","a":{"y":-2,"z":[true,null,"é"]},"b":1}'.encode()


def test_canonical_json_escapes_only_what_json_requires() -> None:
    assert canonical_json({"s": 'q"\\\n\t\x01/€'}) == b'{"s":"q\\"\\\\\\n\\t\\u0001/\xe2\x82\xac"}'


@pytest.mark.parametrize(
    "bad", [1.5, float("nan"), 2**53, -(2**53), {1: "x"}, {"é": 1}, b"x", "\ud800"]
)
def test_canonical_json_refuses_what_has_no_single_encoding(bad: object) -> None:
    with pytest.raises(ValueError):
        canonical_json({"v": bad} if not isinstance(bad, dict) else bad)


def test_chain_step_matches_its_definition() -> None:
    event = {
        "v": 1,
        "seq": 1,
        "ts": "2026-01-01T00:00:00.000000Z",
        "type": "inference",
        "actor": "key:k",
        "tenant": None,
        "salt": "00" * 16,
        "data": {},
    }
    digest = hashlib.sha256(canonical_json(event)).hexdigest()
    assert event_digest(event) == digest
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(digest)).hexdigest()
    assert chain_hash(GENESIS_HASH, digest) == expected


def test_checkpoint_message_and_key_id() -> None:
    assert checkpoint_message(3, "ab" * 32, "t", "kid") == (
        b'{"context":"outpost.audit.checkpoint.v1","hash":"'
        + b"ab" * 32
        + b'","key_id":"kid","seq":3,"ts":"t"}'
    )
    assert key_id_for("A" * 43) == hashlib.sha256(bytes(32)).hexdigest()[:32]
