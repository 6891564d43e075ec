"""The asynchronous client: the one hand-written shell around ``_core`` and ``_e2e``.

``_sync_client.py`` is generated from this file by ``scripts/unasync_sdk.py``
(``async def`` → ``def``, ``await`` dropped, ``AsyncX`` → ``X``); edit here
and rerun the script. ``tests/sdk/test_client.py`` fails when they differ.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, overload

import httpx
from pydantic import BaseModel

from outpost.sdk.client._core import (
    ClientOptions,
    Decoder,
    PlainDecoder,
    Prepared,
    RetryPolicy,
    parse_json,
    parse_model,
    response_error,
    retry_on_error,
    retry_on_status,
    sse_data,
    transport_error,
)
from outpost.sdk.client._e2e import KeyBook, SealedDecoder, open_body, seal_call
from outpost.sdk.e2e import VerifiedHpkeKey
from outpost.sdk.errors import APIError, ConflictError
from outpost.sdk.models import (
    ApiKey,
    AuditPage,
    Budget,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CreatedApiKey,
    Deployment,
    E2ERunner,
    EmbeddingResponse,
    EnrollmentToken,
    FairnessRun,
    KeyQuotas,
    Model,
    Pool,
    PoolGrant,
    PoolSharing,
    Runner,
    UsageReport,
)
from outpost.sdk.sealed import E2E_KEY_MISMATCH, E2E_PREFIX, RUNNER_HEADER

if TYPE_CHECKING:
    from outpost.sdk.audit import VerifyResult

__all__ = ["AsyncClient", "AsyncStream"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Timeout = float | httpx.Timeout | None


class AsyncStream(Generic[T]):
    """The items of a streamed answer. Iterate once; the connection closes at the end."""

    def __init__(self, response: httpx.Response, decoder: Decoder[T]) -> None:
        self.response = response
        self._decoder = decoder

    async def __aiter__(self) -> AsyncIterator[T]:
        try:
            async for line in self.response.aiter_lines():
                data = sse_data(line)
                if data is not None:
                    for item in self._decoder.feed(data):
                        yield item
            self._decoder.finish()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncClient:
    """Outpost's API: OpenAI-compatible inference, administration, end-to-end mode.

    ``base_url`` is the control plane (``OUTPOST_BASE_URL``; a trailing ``/v1``
    is accepted), ``api_key`` an Outpost key (``OUTPOST_API_KEY``). With
    ``e2e=True`` every inference request is sealed to a runner whose identity
    is in ``pins`` (runner id → fingerprint); ``e2e=`` on a call overrides it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: Timeout = None,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        e2e: bool = False,
        pins: Mapping[str, str] | None = None,
        pad_to: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._options = ClientOptions.build(
            base_url, api_key, timeout, retry or RetryPolicy(max_retries), default_headers
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport)
        self._keybook = KeyBook(pins)
        self.e2e = e2e
        self.pad_to = pad_to
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.embeddings = AsyncEmbeddings(self)
        self.models = AsyncModels(self)
        self.runners = AsyncRunners(self)
        self.pools = AsyncPools(self)
        self.deployments = AsyncDeployments(self)
        self.keys = AsyncKeys(self)
        self.usage = AsyncUsage(self)
        self.budgets = AsyncBudgets(self)
        self.audit = AsyncAudit(self)
        self.fairness = AsyncFairness(self)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    def pin(self, runner_id: str, fingerprint: str) -> None:
        """Trust ``runner_id`` for end-to-end requests when its identity has this fingerprint."""
        self._keybook.pin(runner_id, fingerprint)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- transport -------------------------------------------------------------------

    def _prepare(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        context: Any = None,
    ) -> Prepared:
        request = self._options.request(
            method, path, json_body=json_body, params=params, headers=headers, timeout=timeout
        )
        return Prepared(
            request, idempotent=method in ("GET", "HEAD", "PUT", "DELETE"), context=context
        )

    async def _send(self, prepare: Callable[[], Prepared]) -> tuple[Prepared, httpx.Response]:
        """Send with retries; ``prepare`` runs per attempt (an e2e request is resealed)."""
        retry = self._options.retry
        attempt = 0
        while True:
            prepared = prepare()
            retry_after = None
            try:
                response = await self._http.send(prepared.request, stream=True)
            except httpx.TransportError as exc:
                if attempt >= retry.max_retries or not retry_on_error(prepared, exc):
                    raise transport_error(exc) from exc
            else:
                if response.status_code < 400:
                    return prepared, response
                error = response_error(response, await self._read(response))
                if attempt >= retry.max_retries or not retry_on_status(prepared, error):
                    raise error
                retry_after = error.retry_after
            await asyncio.sleep(retry.delay(attempt, retry_after))
            attempt += 1

    async def _read(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            await response.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: Timeout = None,
    ) -> bytes:
        _, response = await self._send(
            lambda: self._prepare(method, path, json_body=json_body, params=params, timeout=timeout)
        )
        return await self._read(response)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return parse_json(await self._request(method, path, **kwargs))

    async def _list(self, path: str, model: type[M], **kwargs: Any) -> list[M]:
        doc = await self._json("GET", path, **kwargs)
        items = doc.get("data") if isinstance(doc, dict) else None
        return [parse_model(model, item) for item in items or []]

    # --- inference ---------------------------------------------------------------------

    async def _inference(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        e2e: bool | None,
        runner: str | None,
        timeout: Timeout,
        result: type[M],
        chunk: type[BaseModel],
    ) -> Any:
        if self.e2e if e2e is None else e2e:
            return await self._sealed(
                endpoint,
                payload,
                stream=stream,
                runner=runner,
                timeout=timeout,
                parse=partial(parse_model, chunk if stream else result),
            )
        if runner is not None:
            raise ValueError("runner= chooses the runner of an end-to-end request; pass e2e=True")
        _, response = await self._send(
            lambda: self._prepare("POST", f"/v1/{endpoint}", json_body=payload, timeout=timeout)
        )
        if stream:
            return AsyncStream(response, PlainDecoder(partial(parse_model, chunk)))
        return parse_model(result, parse_json(await self._read(response)))

    async def _sealed(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        runner: str | None,
        timeout: Timeout,
        parse: Callable[[Any], Any],
    ) -> Any:
        for attempt in range(2):
            target = await self._e2e_target(payload["model"], runner)

            def prepare(target: VerifiedHpkeKey = target) -> Prepared:
                body, call = seal_call(target, payload, stream=stream, pad_to=self.pad_to)
                return self._prepare(
                    "POST",
                    f"{E2E_PREFIX}/{endpoint}",
                    json_body=body,
                    timeout=timeout,
                    headers={RUNNER_HEADER: target.runner_id},
                    context=call,
                )

            try:
                prepared, response = await self._send(prepare)
            except ConflictError as exc:
                if exc.code != E2E_KEY_MISMATCH or attempt:
                    raise
                self._keybook.forget(
                    target.runner_id
                )  # rotated key: fetch, verify against the pin, reseal
                continue
            decoder = SealedDecoder(prepared.context, parse, stream=stream)
            if stream:
                return AsyncStream(response, decoder)
            return open_body(decoder, await self._read(response))
        raise AssertionError("unreachable")

    async def _e2e_target(self, model: str, runner: str | None) -> VerifiedHpkeKey:
        cached = self._keybook.cached(model, runner)
        if cached is not None:
            return cached
        if runner is not None:
            return self._keybook.verify(
                runner, await self._json("GET", f"/api/runners/{runner}/e2e-key")
            )
        listing = await self._json("GET", f"{E2E_PREFIX}/runners", params={"model": model})
        return self._keybook.choose(model, listing)


class _AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class AsyncChatCompletions(_AsyncResource):
    @overload
    async def create(
        self, *, model: str, messages: list[dict[str, Any]], stream: Literal[True], **params: Any
    ) -> AsyncStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatCompletion: ...

    async def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool = False,
        e2e: bool | None = None,
        runner: str | None = None,
        timeout: Timeout = None,
        **params: Any,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """``POST /v1/chat/completions``; ``params`` (max_tokens, temperature, engine extras)
        pass through."""
        payload: dict[str, Any] = {"model": model, "messages": messages, **params}
        if stream:
            payload["stream"] = True
        # _inference parses into ``result`` or streams ``chunk``s as ``stream`` says.
        answer: ChatCompletion | AsyncStream[ChatCompletionChunk] = await self._client._inference(
            "chat/completions",
            payload,
            stream=stream,
            e2e=e2e,
            runner=runner,
            timeout=timeout,
            result=ChatCompletion,
            chunk=ChatCompletionChunk,
        )
        return answer


class AsyncChat(_AsyncResource):
    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self.completions = AsyncChatCompletions(client)


class AsyncCompletions(_AsyncResource):
    @overload
    async def create(
        self, *, model: str, prompt: str | list[str], stream: Literal[True], **params: Any
    ) -> AsyncStream[Completion]: ...

    @overload
    async def create(
        self, *, model: str, prompt: str | list[str], stream: Literal[False] = False, **params: Any
    ) -> Completion: ...

    async def create(
        self,
        *,
        model: str,
        prompt: str | list[str],
        stream: bool = False,
        e2e: bool | None = None,
        runner: str | None = None,
        timeout: Timeout = None,
        **params: Any,
    ) -> Completion | AsyncStream[Completion]:
        """``POST /v1/completions``."""
        payload: dict[str, Any] = {"model": model, "prompt": prompt, **params}
        if stream:
            payload["stream"] = True
        # _inference parses into ``result`` or streams ``chunk``s as ``stream`` says.
        answer: Completion | AsyncStream[Completion] = await self._client._inference(
            "completions",
            payload,
            stream=stream,
            e2e=e2e,
            runner=runner,
            timeout=timeout,
            result=Completion,
            chunk=Completion,
        )
        return answer


class AsyncEmbeddings(_AsyncResource):
    async def create(
        self,
        *,
        model: str,
        input: str | list[str],
        e2e: bool | None = None,
        runner: str | None = None,
        timeout: Timeout = None,
        **params: Any,
    ) -> EmbeddingResponse:
        """``POST /v1/embeddings`` (runners started with ``--embedding``)."""
        payload: dict[str, Any] = {"model": model, "input": input, **params}
        # _inference parses into ``result`` or streams ``chunk``s as ``stream`` says.
        answer: EmbeddingResponse = await self._client._inference(
            "embeddings",
            payload,
            stream=False,
            e2e=e2e,
            runner=runner,
            timeout=timeout,
            result=EmbeddingResponse,
            chunk=EmbeddingResponse,
        )
        return answer


class AsyncModels(_AsyncResource):
    async def list(self) -> builtins.list[Model]:
        return await self._client._list("/v1/models", Model)


class AsyncRunners(_AsyncResource):
    async def list(self) -> builtins.list[Runner]:
        return await self._client._list("/api/runners", Runner)

    async def enroll(
        self, name: str, *, pool: str | None = None, labels: Mapping[str, str] | None = None
    ) -> EnrollmentToken:
        """A one-time enrollment token for a runner named ``name`` (admin), joining ``pool`` (id or
        name; default: the tenant's default pool) with the residency ``labels`` routing obeys."""
        body: dict[str, Any] = {"name": name}
        if pool is not None:
            body["pool"] = pool
        if labels:
            body["labels"] = dict(labels)
        return parse_model(
            EnrollmentToken, await self._client._json("POST", "/api/runners/enroll", json_body=body)
        )

    async def update(
        self,
        runner_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        usd_per_hour: float | None = None,
        pool: str | None = None,
    ) -> Runner:
        """Set what only the owner decides (admin): residency labels, price ($/hour, 0-1000),
        pool."""
        body = {
            k: v
            for k, v in (
                ("labels", dict(labels) if labels is not None else None),
                ("usd_per_hour", usd_per_hour),
                ("pool", pool),
            )
            if v is not None
        }
        return parse_model(
            Runner, await self._client._json("PATCH", f"/api/runners/{runner_id}", json_body=body)
        )

    async def revoke(self, runner_id: str) -> Runner:
        return parse_model(
            Runner, await self._client._json("POST", f"/api/runners/{runner_id}/revoke")
        )

    async def e2e_key(self, runner_id: str) -> VerifiedHpkeKey:
        """The runner's HPKE key, verified against its pin (raises ``RunnerKeyError`` if
        swapped)."""
        doc = await self._client._json("GET", f"/api/runners/{runner_id}/e2e-key")
        return self._client._keybook.verify(runner_id, doc)

    async def e2e_candidates(self, model: str | None = None) -> builtins.list[E2ERunner]:
        """Connected runners that take sealed requests (key documents not yet verified)."""
        return await self._client._list(f"{E2E_PREFIX}/runners", E2ERunner, params={"model": model})


class AsyncPools(_AsyncResource):
    """Runner pools of the caller's tenant and the grants that share them (docs/api.md, "Pools")."""

    async def list(self) -> builtins.list[Pool]:
        return await self._client._list("/api/pools", Pool)

    async def create(self, name: str) -> Pool:
        return parse_model(
            Pool, await self._client._json("POST", "/api/pools", json_body={"name": name})
        )

    async def grants(self, *, include_revoked: bool = False) -> builtins.list[PoolGrant]:
        """Grants of the tenant's pools (``outgoing``) and to it (``incoming``)."""
        return await self._client._list(
            "/api/pools/grants", PoolGrant, params={"include_revoked": str(include_revoked).lower()}
        )

    async def grant(self, pool: str, tenant: str) -> PoolGrant:
        """Let ``tenant`` (id or name; ``"*"``: every tenant, platform operator only) use
        ``pool``."""
        return parse_model(
            PoolGrant,
            await self._client._json(
                "POST", f"/api/pools/{pool}/grants", json_body={"tenant": tenant}
            ),
        )

    async def revoke_grant(self, grant_id: str) -> PoolGrant:
        """Revoke a grant, as its pool's owner or as its grantee."""
        return parse_model(
            PoolGrant, await self._client._json("POST", f"/api/pools/grants/{grant_id}/revoke")
        )

    async def sharing(self) -> PoolSharing:
        return parse_model(PoolSharing, await self._client._json("GET", "/api/pools/sharing"))

    async def set_sharing(self, *, refuse_shared_pools: bool) -> PoolSharing:
        """Refuse every pool other tenants grant (only the tenant's own runners serve it), or
        accept again."""
        return parse_model(
            PoolSharing,
            await self._client._json(
                "PUT", "/api/pools/sharing", json_body={"refuse_shared_pools": refuse_shared_pools}
            ),
        )


class AsyncDeployments(_AsyncResource):
    """Models the control plane deploys onto the tenant's runners (docs/deployments.md).

    ``create`` takes the fields of ``POST /api/deployments`` (docs/api.md "Deployments"):
    ``source`` is ``{"kind": "path", "path": ...}``, ``{"kind": "url", "url": ..., "sha256":
    ...}`` or ``{"kind": "hf", "repo": ..., "revision": ..., "filename": ...}``.
    """

    async def list(self) -> builtins.list[Deployment]:
        return await self._client._list("/api/deployments", Deployment)

    async def get(self, deployment_id: str) -> Deployment:
        return parse_model(
            Deployment, await self._client._json("GET", f"/api/deployments/{deployment_id}")
        )

    async def create(self, *, name: str, source: Mapping[str, Any], **fields: Any) -> Deployment:
        body = {"name": name, "source": dict(source), **fields}
        return parse_model(
            Deployment, await self._client._json("POST", "/api/deployments", json_body=body)
        )

    async def update(self, deployment_id: str, **fields: Any) -> Deployment:
        """Change fields; a new source, engine, options or aliases roll the replicas."""
        return parse_model(
            Deployment,
            await self._client._json(
                "PATCH", f"/api/deployments/{deployment_id}", json_body=fields
            ),
        )

    async def scale(self, deployment_id: str, replicas: int) -> Deployment:
        return parse_model(
            Deployment,
            await self._client._json(
                "POST",
                f"/api/deployments/{deployment_id}/scale",
                json_body={"replicas": replicas},
            ),
        )

    async def delete(self, deployment_id: str) -> None:
        await self._client._request("DELETE", f"/api/deployments/{deployment_id}")

    async def compare(self, name: str, *, window_s: int = 3600) -> builtins.list[dict[str, Any]]:
        """Deployments serving ``name`` side by side: TTFT and ITL percentiles, tokens/s, error
        rate, cost per 1M tokens over the last ``window_s`` seconds."""
        doc = await self._client._json(
            "GET", "/api/deployments/compare", params={"name": name, "window_s": window_s}
        )
        return list(doc.get("data") or []) if isinstance(doc, dict) else []


class AsyncKeys(_AsyncResource):
    async def list(self) -> builtins.list[ApiKey]:
        return await self._client._list("/api/keys", ApiKey)

    async def create(
        self,
        name: str,
        *,
        scopes: builtins.list[str] | None = None,
        expires_in_s: int | None = None,
        role: str | None = None,
        allowed_models: builtins.list[str] | None = None,
    ) -> CreatedApiKey:
        """``role``: what the key may administer (one the caller may grant); ``allowed_models``:
        names and glob patterns it may call (default: every model)."""
        body: dict[str, Any] = {
            "name": name,
            "scopes": scopes or ["inference"],
            "expires_in_s": expires_in_s,
        }
        if role is not None:
            body["role"] = role
        if allowed_models is not None:
            body["allowed_models"] = allowed_models
        return parse_model(
            CreatedApiKey, await self._client._json("POST", "/api/keys", json_body=body)
        )

    async def set_models(self, key_id: str, allowed_models: builtins.list[str] | None) -> ApiKey:
        """Replace the key's allow-list; ``None`` lifts it, ``[]`` allows no model."""
        body = {"allowed_models": allowed_models}
        return parse_model(
            ApiKey, await self._client._json("PUT", f"/api/keys/{key_id}/models", json_body=body)
        )

    async def set_quotas(
        self,
        key_id: str,
        *,
        tokens_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        max_concurrent: int | None = None,
    ) -> KeyQuotas:
        """Replace the key's quotas (a left-out one is no limit)."""
        body = {
            "tokens_per_minute": tokens_per_minute,
            "tokens_per_day": tokens_per_day,
            "max_concurrent": max_concurrent,
        }
        return parse_model(
            KeyQuotas, await self._client._json("PUT", f"/api/keys/{key_id}/quotas", json_body=body)
        )

    async def revoke(self, key_id: str) -> ApiKey:
        return parse_model(ApiKey, await self._client._json("POST", f"/api/keys/{key_id}/revoke"))


class AsyncUsage(_AsyncResource):
    async def get(
        self,
        *,
        period: str = "month",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
    ) -> UsageReport:
        """Tokens, requests and cost of this ``period`` (day, week, month) or of [start, end)."""
        params = {"period": period, "start": _iso(start), "end": _iso(end)}
        return parse_model(
            UsageReport, await self._client._json("GET", "/api/usage", params=params)
        )


class AsyncBudgets(_AsyncResource):
    async def list(self) -> builtins.list[Budget]:
        return await self._client._list("/api/budgets", Budget)

    async def set(
        self,
        amount_usd: float,
        *,
        period: str = "month",
        api_key_id: str | None = None,
        soft_threshold: float = 0.8,
    ) -> Budget:
        """Create or replace the tenant's (or one key's) budget for ``period`` (admin)."""
        body = {
            "amount_usd": amount_usd,
            "period": period,
            "api_key_id": api_key_id,
            "soft_threshold": soft_threshold,
        }
        return parse_model(Budget, await self._client._json("POST", "/api/budgets", json_body=body))

    async def delete(self, budget_id: str) -> None:
        await self._client._request("DELETE", f"/api/budgets/{budget_id}")


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class AsyncAudit(_AsyncResource):
    async def list(self, **params: Any) -> AuditPage:
        return parse_model(AuditPage, await self._client._json("GET", "/api/audit", params=params))

    async def export(self) -> str:
        """The tenant's audit log as JSONL, up to the latest signed checkpoint (admin)."""
        return (await self._client._request("GET", "/api/audit/export")).decode()

    async def public_keys(self) -> builtins.list[str]:
        doc = await self._client._json("GET", "/api/audit/keys")
        return [k["public_key"] for k in doc.get("data", [])]

    async def checkpoints(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """Every signed checkpoint after seq ``after``, oldest first (admin).

        Keep them outside the control plane (append them to a file): ``verify(...,
        kept_checkpoints=...)`` then detects a log whose newest events were removed
        together with their checkpoints."""
        out: builtins.list[dict[str, Any]] = []
        while True:
            doc = await self._client._json("GET", "/api/audit/checkpoints", params={"after": after})
            out.extend(doc.get("data", []))
            if not doc.get("next_cursor"):
                return out
            after = int(doc["next_cursor"])

    async def latest_checkpoint(self) -> dict[str, Any]:
        """The newest signed checkpoint (admin); 404 before the first one."""
        doc = await self._client._json("GET", "/api/audit/checkpoints/latest")
        if not isinstance(doc, dict):
            raise APIError("the latest checkpoint is not a JSON object")
        return doc

    async def verify(
        self,
        export: str | None = None,
        public_keys: builtins.list[str] | None = None,
        kept_checkpoints: builtins.list[dict[str, Any]] | None = None,
    ) -> VerifyResult:
        """Verify an export offline. Pass ``public_keys`` you hold: keys fetched from the
        control plane only prove the log is consistent with what it says about itself.
        ``kept_checkpoints`` (from :meth:`checkpoints`, kept by you) must lie on the chain."""
        from outpost.sdk.audit import verify_export  # the offline verifier; only needed here

        text = export if export is not None else await self.export()
        keys = public_keys if public_keys is not None else await self.public_keys()
        return verify_export(text.splitlines(), keys, kept_checkpoints or ())


class AsyncFairnessRuns(_AsyncResource):
    async def list(self, limit: int = 50) -> builtins.list[FairnessRun]:
        return await self._client._list("/api/fairness/runs", FairnessRun, params={"limit": limit})

    async def create(self, **body: Any) -> FairnessRun:
        """Start a bias-probe run (admin); ``body`` as in docs/fairness.md (suite, model, ...)."""
        return parse_model(
            FairnessRun, await self._client._json("POST", "/api/fairness/runs", json_body=body)
        )

    async def get(self, run_id: str) -> FairnessRun:
        return parse_model(
            FairnessRun, await self._client._json("GET", f"/api/fairness/runs/{run_id}")
        )


class AsyncFairness(_AsyncResource):
    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self.runs = AsyncFairnessRuns(client)
