"""End-to-end mode in the client, without I/O: pins, key checks, sealing, opening.

* :class:`KeyBook` holds the pins (runner id → identity fingerprint) and the
  key documents that verified against them. A document that fails its pin is
  a swapped key: refused, never skipped in favour of another runner.
* :func:`seal_call` seals one OpenAI body to one runner, with a fresh request
  id and response key; a retry reseals (the runner refuses a replayed
  envelope).
* :class:`SealedDecoder` opens the answer chunk by chunk, strictly in order,
  and raises :class:`~sdk.errors.StreamIntegrityError` on anything altered,
  reordered, repeated or cut short.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from outpost.sdk.client._core import sse_data
from outpost.sdk.e2e import (
    ChunkOpener,
    E2EError,
    ResponseKey,
    VerifiedHpkeKey,
    normalize_fingerprint,
    seal_request,
    verify_hpke_key,
)
from outpost.sdk.errors import (
    NoPinnedRunnerError,
    RunnerKeyError,
    StreamIntegrityError,
    error_for_status,
)
from outpost.sdk.models import E2ERunner
from outpost.sdk.sealed import HEAD, MORE, PIECE, ResponseHead, SealedRequest, new_request_id

__all__ = ["KeyBook", "SealedCall", "SealedDecoder", "clear_max_tokens", "open_body", "seal_call"]

T = TypeVar("T")


class KeyBook:
    """Pinned runner identities and the HPKE keys verified against them."""

    def __init__(
        self,
        pins: Mapping[str, str] | None = None,
        *,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pins: dict[str, str] = {}
        self._ttl = ttl_s
        self._clock = clock
        self._keys: dict[str, tuple[float, VerifiedHpkeKey]] = {}
        self._choice: dict[str, str] = {}  # model → runner last chosen
        for runner_id, fp in (pins or {}).items():
            self.pin(runner_id, fp)

    def pin(self, runner_id: str, fingerprint: str) -> None:
        try:
            self._pins[runner_id] = normalize_fingerprint(fingerprint)
        except E2EError as exc:
            raise ValueError(f"pin for runner {runner_id!r}: {exc}") from None
        self.forget(runner_id)

    @property
    def pins(self) -> dict[str, str]:
        return dict(self._pins)

    def forget(self, runner_id: str) -> None:
        self._keys.pop(runner_id, None)

    def cached(self, model: str, runner: str | None) -> VerifiedHpkeKey | None:
        rid = runner or self._choice.get(model)
        hit = self._keys.get(rid) if rid else None
        if hit is None or hit[0] < self._clock():
            return None
        return hit[1]

    def verify(self, runner_id: str, doc: Any) -> VerifiedHpkeKey:
        pin = self._pins.get(runner_id)
        if pin is None:
            raise NoPinnedRunnerError(
                f"runner {runner_id!r} is not pinned: pass pins={{runner_id: fingerprint}}"
            )
        try:
            verified = verify_hpke_key(doc, pin)
        except E2EError as exc:
            raise RunnerKeyError(f"runner {runner_id!r}: key document refused: {exc}") from exc
        if verified.runner_id != runner_id:
            raise RunnerKeyError(
                f"runner {runner_id!r}: key document names runner {verified.runner_id!r}"
            )
        self._keys[runner_id] = (self._clock() + self._ttl, verified)
        return verified

    def choose(self, model: str, listing: Any, runner: str | None = None) -> VerifiedHpkeKey:
        """The first pinned runner of a ``GET /v1/e2e/runners`` listing, verified."""
        try:
            entries = [E2ERunner.model_validate(e) for e in listing["data"]]
        except (TypeError, KeyError, ValidationError) as exc:
            raise NoPinnedRunnerError(f"unexpected runner listing: {exc}") from None
        for entry in entries:
            if entry.runner_id in self._pins and runner in (None, entry.runner_id):
                verified = self.verify(entry.runner_id, entry.key)
                self._choice[model] = entry.runner_id
                return verified
        offered = ", ".join(e.runner_id for e in entries) or "none"
        raise NoPinnedRunnerError(
            f"no pinned runner serves {model!r} end to end (connected with a key: {offered})"
        )


@dataclass(frozen=True)
class SealedCall:
    request_id: str
    runner_id: str
    response_key: ResponseKey


def clear_max_tokens(payload: Mapping[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def seal_call(
    target: VerifiedHpkeKey, payload: Mapping[str, Any], *, stream: bool, pad_to: int = 0
) -> tuple[dict[str, Any], SealedCall]:
    """The JSON body of ``POST /v1/e2e/...`` and what it takes to open the answer."""
    request_id = new_request_id()
    body = json.dumps(payload, separators=(",", ":")).encode()
    envelope, response_key = seal_request(
        target.hpke_public_key, target.runner_id, body, request_id, pad_to=pad_to
    )
    sealed = SealedRequest(
        model=payload["model"],
        stream=stream,
        max_tokens=clear_max_tokens(payload),
        request_id=request_id,
        envelope=envelope,
    )
    return sealed.model_dump(exclude_none=True), SealedCall(
        request_id, target.runner_id, response_key
    )


class SealedDecoder(Generic[T]):
    """Open a sealed answer: a head, then pieces, then an empty final chunk."""

    def __init__(self, call: SealedCall, parse: Callable[[Any], T], *, stream: bool) -> None:
        self._opener = ChunkOpener(call.response_key, call.request_id)
        self._parse = parse
        self._stream = stream
        self.head: ResponseHead | None = None
        self._partial = bytearray()
        self._pieces: list[bytes] = []

    def feed(self, data: str) -> list[T]:
        if data.strip() == "[DONE]":
            return []
        if data.startswith("{"):
            # Clear JSON comes only from the control plane (runner lost, engine failed):
            # report it; the answer is incomplete either way.
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            raise error_for_status(502, event if isinstance(event, dict) else data)
        try:
            plain = self._opener.open(data)
        except E2EError as exc:
            raise StreamIntegrityError(f"encrypted answer refused: {exc}") from exc
        if self._opener.done:
            if plain:
                raise StreamIntegrityError("the final chunk carries data")
            return []
        return self._take(plain[:1], plain[1:])

    def _take(self, kind: bytes, rest: bytes) -> list[T]:
        if self.head is None:
            if kind != HEAD:
                raise StreamIntegrityError("encrypted answer does not start with its head")
            try:
                self.head = ResponseHead.model_validate_json(rest)
            except ValidationError:
                raise StreamIntegrityError("encrypted answer has a malformed head") from None
            return []
        if kind == MORE:
            self._partial += rest
            return []
        if kind != PIECE:
            raise StreamIntegrityError("encrypted answer has an unknown chunk kind")
        piece = bytes(self._partial) + rest
        self._partial.clear()
        if self.head.status >= 400:
            raise error_for_status(self.head.status, piece)
        if not self._stream:
            self._pieces.append(piece)
            return []
        try:
            obj = json.loads(piece)
        except ValueError:
            raise StreamIntegrityError("encrypted event is not JSON") from None
        if isinstance(obj, dict) and obj.get("error"):
            raise error_for_status(502, obj)
        return [self._parse(obj)]

    def finish(self) -> None:
        """End of transport: refuse a stream cut before its final chunk."""
        try:
            self._opener.finish()
        except E2EError as exc:
            raise StreamIntegrityError(f"encrypted answer cut short: {exc}") from exc

    def result(self) -> T:
        """The non-streamed answer, after :meth:`finish`."""
        try:
            return self._parse(json.loads(b"".join(self._pieces)))
        except ValueError:
            raise StreamIntegrityError("encrypted answer is not JSON") from None


def open_body(decoder: SealedDecoder[T], body: bytes) -> T:
    """Open a whole (non-streamed) sealed answer."""
    for line in body.decode("ascii", errors="replace").splitlines():
        data = sse_data(line)
        if data is not None:
            decoder.feed(data)
    decoder.finish()
    return decoder.result()
