"""End-to-end encryption building blocks: what a relay can and cannot do."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.sdk import protocol
from outpost.sdk.e2e import (
    MAX_CHUNK_BYTES,
    MAX_RECEIPT_CHARS,
    ChunkOpener,
    ChunkSealer,
    DecryptionError,
    DuplicateChunkError,
    E2EError,
    Kem,
    KeyMismatchError,
    KeyVerificationError,
    MalformedError,
    OutOfOrderChunkError,
    ReceiptError,
    ReplayError,
    ReplayGuard,
    ResponseKey,
    RunnerKeys,
    StaleEnvelopeError,
    StreamError,
    TruncatedStreamError,
    UnsupportedVersionError,
    fingerprint,
    open_request,
    parse_envelope,
    seal_request,
    sign_receipt,
    signed_hpke_key,
    verify_hpke_key,
    verify_receipt,
)

RUNNER = "runner-7"
REQUEST = "req-0001"
CANARY = "CANARY-7f3a-do-not-leak-the-prompt"
NOW = 1_800_000_000.0
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module", params=list(Kem), ids=lambda k: k.value)
def keys(request: pytest.FixtureRequest) -> RunnerKeys:
    return RunnerKeys.generate(request.param)


@pytest.fixture(scope="module")
def x_keys() -> RunnerKeys:
    return RunnerKeys.generate(Kem.X25519)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def seal(keys: RunnerKeys, body: bytes = b"{}", clock: FakeClock | None = None, **kw):
    return seal_request(keys.hpke_public, RUNNER, body, REQUEST, clock=clock or FakeClock(), **kw)


def open_(keys: RunnerKeys, envelope: str, guard: ReplayGuard | None = None, **kw):
    guard = guard if guard is not None else ReplayGuard(clock=FakeClock())
    kw.setdefault("runner_id", RUNNER)
    kw.setdefault("request_id", REQUEST)
    return open_request(keys, envelope, replay_guard=guard, **kw)


def stream(key: ResponseKey, parts: list[bytes], **kw) -> list[str]:
    sealer = ChunkSealer(key, REQUEST, **kw)
    return [sealer.seal(p, final=i == len(parts) - 1) for i, p in enumerate(parts)]


def edit_envelope(envelope: str, **fields: object) -> str:
    doc = json.loads(envelope)
    doc.update(fields)
    return json.dumps(doc, separators=(",", ":"))


def flip(token: str, index: int) -> str:
    """Flip one bit of the bytes a base64url token encodes."""
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b'{"messages":[]}', bytes(range(256)) * 40])
def test_request_and_response_round_trip(keys: RunnerKeys, body: bytes) -> None:
    envelope, client_key = seal(keys, body)
    opened = open_(keys, envelope)
    assert opened.body == body
    assert opened.issued_at == NOW
    parts = [b"data: one\n\n", b"", b"data: [DONE]\n\n"]
    opener = ChunkOpener(client_key, REQUEST)
    assert [opener.open(c) for c in stream(opened.response_key, parts)] == parts
    opener.finish()
    assert opener.done


def test_parse_envelope_shows_routing_fields_only(keys: RunnerKeys) -> None:
    envelope, _ = seal(keys)
    parsed = parse_envelope(envelope)
    assert (parsed.kem, parsed.runner_id, parsed.key_id) == (
        keys.kem,
        RUNNER,
        keys.hpke_public.key_id,
    )
    assert parse_envelope(parsed.encode()) == parsed
    assert envelope.startswith('{"v":1,')


def test_canary_never_appears_in_ciphertext(keys: RunnerKeys) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": CANARY * 3}]}).encode()
    envelope, client_key = seal(keys, body)
    opened = open_(keys, envelope)
    chunks = stream(opened.response_key, [CANARY.encode()] * 3)
    opener = ChunkOpener(client_key, REQUEST)
    assert b"".join(opener.open(c) for c in chunks) == CANARY.encode() * 3
    needles = [CANARY]
    for shift in range(3):  # base64 of the canary at each alignment
        encoded = base64.urlsafe_b64encode(b"x" * shift + CANARY.encode()).decode()
        needles.append(encoded[4:-4])
    for haystack in [envelope, *chunks]:
        for needle in needles:
            assert needle not in haystack
    assert CANARY not in repr(opened) and CANARY not in repr(keys)


def test_runner_keys_serialize_and_save_private(tmp_path, keys: RunnerKeys) -> None:
    loaded = RunnerKeys.load(keys.dump())
    assert loaded.hpke_public == keys.hpke_public and loaded.fingerprint == keys.fingerprint
    path = tmp_path / "keys.json"
    keys.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert RunnerKeys.from_file(path).dump() == keys.dump()
    secret = json.loads(keys.dump())["hpke"]
    assert secret not in repr(keys) and secret not in repr(keys.hpke_key)
    with pytest.raises(UnsupportedVersionError):
        RunnerKeys.load(keys.dump().replace('"v":1', '"v":2'))


def test_fingerprint_is_grouped_sha256(x_keys: RunnerKeys) -> None:
    fp = x_keys.fingerprint
    assert len(fp.split(":")) == 16 and all(len(g) == 4 for g in fp.split(":"))
    assert fp == fingerprint(x_keys.identity_public)


# --- key pinning -------------------------------------------------------------


def test_pinned_key_is_accepted_in_any_spelling(keys: RunnerKeys) -> None:
    doc = json.loads(json.dumps(signed_hpke_key(keys.identity, keys.hpke_public, RUNNER)))
    for pin in (keys.fingerprint, keys.fingerprint.replace(":", "").upper(), keys.identity_public):
        verified = verify_hpke_key(doc, pin)
        assert verified.hpke_public_key == keys.hpke_public
        assert verified.runner_id == RUNNER


def test_swapped_key_is_refused_by_the_pin(x_keys: RunnerKeys) -> None:
    genuine = signed_hpke_key(x_keys.identity, x_keys.hpke_public, RUNNER)
    mallory = RunnerKeys.generate()
    # The control plane signs its own key with its own identity: the pin refuses it.
    forged = signed_hpke_key(mallory.identity, mallory.hpke_public, RUNNER)
    with pytest.raises(KeyVerificationError, match="pinned"):
        verify_hpke_key(forged, x_keys.fingerprint)
    # Or it swaps only the HPKE key inside the genuine document: the signature breaks.
    spliced = {**genuine, "hpke_public_key": mallory.hpke_public.to_b64()}
    with pytest.raises(KeyVerificationError, match="signature"):
        verify_hpke_key(spliced, x_keys.fingerprint)
    relabelled = {**genuine, "runner_id": "runner-8"}
    with pytest.raises(KeyVerificationError):
        verify_hpke_key(relabelled, x_keys.fingerprint)


def test_key_document_freshness_and_pin_format(x_keys: RunnerKeys, clock: FakeClock) -> None:
    doc = signed_hpke_key(x_keys.identity, x_keys.hpke_public, RUNNER, clock=clock)
    clock.now += 3600
    verify_hpke_key(doc, x_keys.fingerprint, max_age_s=7200, clock=clock)
    with pytest.raises(KeyVerificationError):
        verify_hpke_key(doc, x_keys.fingerprint, max_age_s=60, clock=clock)
    with pytest.raises(MalformedError):
        verify_hpke_key(doc, "not-a-fingerprint")


# --- request envelope attacks --------------------------------------------------


def test_tampered_envelope_is_refused(keys: RunnerKeys) -> None:
    envelope, _ = seal(keys)
    ct = json.loads(envelope)["ct"]
    for index in (0, len(base64.urlsafe_b64decode(ct + "==")) // 2, -1):
        with pytest.raises(DecryptionError):
            open_(keys, edit_envelope(envelope, ct=flip(ct, index)))


def test_envelope_is_bound_to_request_and_runner(x_keys: RunnerKeys) -> None:
    envelope, _ = seal(x_keys)
    with pytest.raises(DecryptionError):
        open_(x_keys, envelope, request_id="req-0002")
    with pytest.raises(KeyMismatchError):
        open_(x_keys, envelope, runner_id="runner-8")
    # Rewriting the clear runner id to match does not help: it is inside HPKE's info.
    with pytest.raises(DecryptionError):
        open_(x_keys, edit_envelope(envelope, rid="runner-8"), runner_id="runner-8")


def test_envelope_for_another_key_is_refused(x_keys: RunnerKeys) -> None:
    other = RunnerKeys.generate()
    envelope, _ = seal(other)
    with pytest.raises(KeyMismatchError, match="stale"):
        open_(x_keys, envelope)
    kid = base64.urlsafe_b64encode(x_keys.hpke_public.key_id).rstrip(b"=").decode()
    with pytest.raises(DecryptionError):
        open_(x_keys, edit_envelope(envelope, kid=kid))


def test_replayed_request_is_refused(x_keys: RunnerKeys, clock: FakeClock) -> None:
    guard = ReplayGuard(clock=clock)
    envelope, _ = seal(x_keys, clock=clock)
    open_(x_keys, envelope, guard)
    clock.now += 10
    with pytest.raises(ReplayError):
        open_(x_keys, envelope, guard)


def test_stale_and_future_envelopes_are_refused(x_keys: RunnerKeys, clock: FakeClock) -> None:
    guard = ReplayGuard(max_age_s=60, max_future_s=5, clock=clock)
    old, _ = seal(x_keys, clock=FakeClock(NOW - 61))
    with pytest.raises(StaleEnvelopeError):
        open_(x_keys, old, guard)
    future, _ = seal(x_keys, clock=FakeClock(NOW + 6))
    with pytest.raises(StaleEnvelopeError):
        open_(x_keys, future, guard)
    fresh, _ = seal(x_keys, clock=FakeClock(NOW - 59))
    open_(x_keys, fresh, guard)


def test_replay_guard_memory_is_bounded_and_fails_closed(clock: FakeClock) -> None:
    guard = ReplayGuard(max_age_s=60, max_entries=3, clock=clock)
    ids = [bytes([i]) * 16 for i in range(5)]
    for i, eid in enumerate(ids):
        guard.check(eid, NOW - 10 + i)
    assert guard.size == 3
    # ids[0] and ids[1] were forgotten; their replays fall below the raised floor.
    for eid, ts in ((ids[0], NOW - 10), (ids[1], NOW - 9)):
        with pytest.raises(StaleEnvelopeError):
            guard.check(eid, ts)
    with pytest.raises(StaleEnvelopeError):  # older than everything kept while full
        guard.check(b"n" * 16, NOW - 8)
    with pytest.raises(ReplayError):
        guard.check(ids[4], NOW - 6)
    clock.now += 120
    guard.check(b"z" * 16, clock.now)
    assert guard.size == 1


def test_replay_guard_refuses_envelopes_from_before_a_restart(clock: FakeClock) -> None:
    guard = ReplayGuard(not_before=clock.now, clock=clock)
    with pytest.raises(StaleEnvelopeError, match="restart"):
        guard.check(b"a" * 16, NOW - 1)
    guard.check(b"b" * 16, NOW + 0.001)


def test_padding_hides_request_length(x_keys: RunnerKeys) -> None:
    short, _ = seal(x_keys, b"a", pad_to=4096)
    long, _ = seal(x_keys, b"a" * 3000, pad_to=4096)
    assert len(short) == len(long)
    assert open_(x_keys, long).body == b"a" * 3000


# --- response stream attacks -------------------------------------------------


@pytest.fixture
def response_key() -> ResponseKey:
    return ResponseKey.generate()


def test_tampered_chunk_is_refused(response_key: ResponseKey) -> None:
    chunks = stream(response_key, [b"hello", b"world"])
    for index in (1, 5, 12, -1):  # flags, sequence number, ciphertext, tag
        with pytest.raises((DecryptionError, MalformedError, StreamError)):
            ChunkOpener(response_key, REQUEST).open(flip(chunks[0], index))


def test_final_flag_cannot_be_forged(response_key: ResponseKey) -> None:
    chunks = stream(response_key, [b"partial", b"rest"])
    with pytest.raises(DecryptionError):
        ChunkOpener(response_key, REQUEST).open(flip(chunks[0], 1))


def test_reordered_chunks_are_refused(response_key: ResponseKey) -> None:
    chunks = stream(response_key, [b"a", b"b", b"c"])
    opener = ChunkOpener(response_key, REQUEST)
    opener.open(chunks[0])
    with pytest.raises(OutOfOrderChunkError) as info:
        opener.open(chunks[2])
    assert (info.value.expected, info.value.got) == (1, 2)
    with pytest.raises(StreamError):  # a failed stream stays failed
        opener.open(chunks[1])


def test_duplicated_chunk_is_refused(response_key: ResponseKey) -> None:
    chunks = stream(response_key, [b"a", b"b"])
    opener = ChunkOpener(response_key, REQUEST)
    opener.open(chunks[0])
    with pytest.raises(DuplicateChunkError):
        opener.open(chunks[0])


def test_truncated_stream_is_refused(response_key: ResponseKey) -> None:
    chunks = stream(response_key, [b"a", b"b", b"c"])
    opener = ChunkOpener(response_key, REQUEST)
    for chunk in chunks[:-1]:
        opener.open(chunk)
    with pytest.raises(TruncatedStreamError):
        opener.finish()
    with pytest.raises(TruncatedStreamError):
        ChunkOpener(response_key, REQUEST).finish()


def test_nothing_follows_the_final_chunk(response_key: ResponseKey) -> None:
    sealer = ChunkSealer(response_key, REQUEST)
    last = sealer.seal(b"end", final=True)
    with pytest.raises(StreamError):
        sealer.seal(b"more")
    opener = ChunkOpener(response_key, REQUEST)
    opener.open(last)
    with pytest.raises(StreamError):
        opener.open(last)


def test_chunks_are_bound_to_request_and_key(response_key: ResponseKey) -> None:
    chunk = stream(response_key, [b"a"])[0]
    with pytest.raises(DecryptionError):
        ChunkOpener(response_key, "req-0002").open(chunk)
    with pytest.raises(DecryptionError):
        ChunkOpener(ResponseKey.generate(), REQUEST).open(chunk)


def test_chunk_padding_hides_lengths_and_fits_a_frame(response_key: ResponseKey) -> None:
    sizes = {len(c) for c in stream(response_key, [b"a", b"bb" * 50, b"c" * 200], pad_to=256)}
    assert len(sizes) == 1
    biggest = stream(response_key, [b"x" * MAX_CHUNK_BYTES], pad_to=1000)[0]
    assert len(biggest) <= protocol.MAX_DATA_BYTES
    with pytest.raises(ValueError):
        ChunkSealer(response_key, REQUEST).seal(b"x" * (MAX_CHUNK_BYTES + 1))


# --- receipts -----------------------------------------------------------------


def usage(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "request_id": REQUEST,
        "runner_id": RUNNER,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "started_at": NOW,
        "finished_at": NOW + 1.5,
    }
    return {**fields, **overrides}


def test_receipt_round_trip(x_keys: RunnerKeys) -> None:
    receipt = sign_receipt(x_keys.identity, usage())
    got = verify_receipt(x_keys.identity_public, receipt, REQUEST)
    assert (got.prompt_tokens, got.completion_tokens, got.total_tokens) == (12, 34, 46)
    assert len(sign_receipt(x_keys.identity, usage(request_id="r" * 128))) <= MAX_RECEIPT_CHARS


def test_forged_receipt_is_refused(x_keys: RunnerKeys) -> None:
    forged = sign_receipt(Ed25519PrivateKey.generate(), usage(completion_tokens=1))
    with pytest.raises(ReceiptError):
        verify_receipt(x_keys.identity_public, forged, REQUEST)


def test_altered_receipt_is_refused(x_keys: RunnerKeys) -> None:
    payload, signature = sign_receipt(x_keys.identity, usage()).split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["completion_tokens"] = 1
    altered = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    with pytest.raises(ReceiptError):
        verify_receipt(x_keys.identity_public, f"{altered}.{signature}", REQUEST)


def test_receipt_for_another_request_is_refused(x_keys: RunnerKeys) -> None:
    receipt = sign_receipt(x_keys.identity, usage(request_id="req-other"))
    with pytest.raises(ReceiptError, match="req-other"):
        verify_receipt(x_keys.identity_public, receipt, REQUEST)


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"completion_tokens": 1.5},
        {"prompt_tokens": True},
        {"finished_at": NOW - 1},
        {"started_at": float("nan")},
        {"extra": 1},
    ],
)
def test_invalid_usage_cannot_be_signed(x_keys: RunnerKeys, bad: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        sign_receipt(x_keys.identity, usage(**bad))


# --- fuzzing: untrusted input only ever raises E2EError ------------------------

_any_input = st.one_of(st.binary(max_size=600), st.text(max_size=600))
_b64 = st.binary(max_size=400).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), _b64
)
_envelope_doc = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), _json_scalar),
        "kem": st.one_of(st.sampled_from([k.value for k in Kem]), _json_scalar),
        "rid": st.one_of(st.just(RUNNER), _json_scalar),
        "kid": st.one_of(_b64, _json_scalar),
        "ct": st.one_of(_b64, _json_scalar),
        "x": _json_scalar,
    },
)


@FUZZ
@given(raw=_any_input)
def test_fuzz_parse_envelope_raises_only_e2e_errors(raw: str | bytes) -> None:
    with pytest.raises(E2EError):
        parse_envelope(raw)


@FUZZ
@given(doc=_envelope_doc)
def test_fuzz_open_request_structured(x_keys: RunnerKeys, doc: dict[str, object]) -> None:
    with pytest.raises(E2EError):
        open_(x_keys, json.dumps(doc))


@FUZZ
@given(ct=st.binary(max_size=300), mutation=st.tuples(st.integers(0), st.integers(1, 255)))
def test_fuzz_forged_or_mutated_ciphertext_is_refused(
    x_keys: RunnerKeys, ct: bytes, mutation: tuple[int, int]
) -> None:
    """Past every clear check (right runner, KEM and key id), only HPKE decides."""
    envelope, _ = seal(x_keys)
    genuine = bytearray(base64.urlsafe_b64decode(json.loads(envelope)["ct"] + "=="))
    index, bit = mutation
    genuine[index % len(genuine)] ^= bit
    for candidate in (ct, bytes(genuine)):
        encoded = base64.urlsafe_b64encode(candidate).rstrip(b"=").decode()
        with pytest.raises(E2EError):
            open_(x_keys, edit_envelope(envelope, ct=encoded))


@FUZZ
@given(raw=st.one_of(_any_input, _b64))
def test_fuzz_chunk_opener_raises_only_e2e_errors(raw: str | bytes) -> None:
    opener = ChunkOpener(ResponseKey(b"k" * 32), REQUEST)
    with pytest.raises(E2EError):
        opener.open(raw)
    with pytest.raises(E2EError):
        opener.finish()


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_chunk_is_refused(data: st.DataObject) -> None:
    key = ResponseKey(b"k" * 32)
    chunk = ChunkSealer(key, REQUEST).seal(b"some tokens", final=True)
    raw = bytearray(base64.urlsafe_b64decode(chunk + "=" * (-len(chunk) % 4)))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    mutated = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(E2EError):
        ChunkOpener(key, REQUEST).open(mutated)


@FUZZ
@given(raw=st.one_of(_any_input, st.tuples(_b64, _b64).map(".".join)))
def test_fuzz_verify_receipt_raises_only_e2e_errors(x_keys: RunnerKeys, raw: str) -> None:
    with pytest.raises(E2EError):
        verify_receipt(x_keys.identity_public, raw, REQUEST)


@FUZZ
@given(doc=st.dictionaries(st.text(max_size=20), _json_scalar, max_size=10))
def test_fuzz_verify_hpke_key_raises_only_e2e_errors(
    x_keys: RunnerKeys, doc: dict[str, object]
) -> None:
    genuine = signed_hpke_key(x_keys.identity, x_keys.hpke_public, RUNNER)
    with pytest.raises(E2EError):
        verify_hpke_key({**genuine, **doc} if doc else {"v": 1}, x_keys.fingerprint)
