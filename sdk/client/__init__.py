"""The Outpost Python SDK: :class:`Client` (blocking) and :class:`AsyncClient`.

    from outpost.sdk.client import Client

    with Client("http://127.0.0.1:8080", api_key="sk-…") as client:
        reply = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}])

``docs/sdk.md`` covers streaming, administration, errors, retries and
end-to-end mode (``Client(..., e2e=True, pins={runner_id: fingerprint})``).
"""

from outpost.sdk.client._async_client import AsyncClient, AsyncStream
from outpost.sdk.client._core import RetryPolicy
from outpost.sdk.client._sync_client import Client, Stream

__all__ = ["AsyncClient", "AsyncStream", "Client", "RetryPolicy", "Stream"]
