"""A SIMULATED OpenAI-compatible engine that streams tokens as fast as asked.

Nothing here runs a model. It exists to find the *gateway's* ceiling: an
engine that can emit tens of thousands of chunks per second while spending
as little CPU as possible, so that on a 2-core machine the control plane and
the runner, not the engine, are what saturates.

bench/bench_fairness.py has a simulated server too, built as a timing model
(slots, prefill, decode) on Starlette. Starlette spends about as much CPU
per chunk as the gateway under test, so that simulator would be the
bottleneck here; this one is a raw asyncio HTTP/1.1 server that writes
pre-encoded chunks.

Behaviour, per request:

* ``POST /v1/chat/completions`` (and ``/v1/completions``) with ``stream``:
  after ``--ttft-ms``, one role chunk, then ``max_tokens`` content chunks at
  ``--tokens-per-s`` per stream (0 = no pacing: as fast as the socket takes
  them), a finish chunk, a usage chunk when ``stream_options.include_usage``,
  and ``data: [DONE]`` — the shape llama.cpp's server sends, one SSE event
  per HTTP chunk;
* without ``stream``: one JSON completion after the same total time;
* ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (empty).

The vendor fields ``sim_tokens_per_s`` and ``sim_ttft_ms`` in a request body
override the two settings for that request (a gateway passes them through).

    .venv/bin/python bench/sim_engine.py --port 8001 [--tokens-per-s 0] [--ttft-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

__all__ = ["SimEngineConfig", "serve"]

MODEL = "sim-engine"


@dataclass(frozen=True)
class SimEngineConfig:
    tokens_per_s: float = 0.0  # per stream; 0 = unpaced
    ttft_ms: float = 0.0  # simulated prefill before the first chunk
    model: str = MODEL

    def describe(self) -> str:
        rate = (
            "unpaced (as fast as the socket drains)"
            if self.tokens_per_s <= 0
            else f"{self.tokens_per_s:g} tokens/s per stream"
        )
        return (
            f"simulated engine (`bench/sim_engine.py`): {rate}, first token after "
            f"{self.ttft_ms:g} ms"
        )


def _event(obj: dict) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": int(time.time()),
        "id": "chatcmpl-sim",
        "model": model,
        "system_fingerprint": "sim",
        "object": "chat.completion.chunk",
    }


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_DONE = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: "
        f"{len(body)}\r\n\r\n".encode()
        + body
    )


def _per_request(cfg: SimEngineConfig, body: dict) -> SimEngineConfig:
    # Vendor fields a gateway passes through let one simulator serve every scenario.
    rate, ttft = body.get("sim_tokens_per_s"), body.get("sim_ttft_ms")
    if rate is None and ttft is None:
        return cfg
    return SimEngineConfig(
        float(cfg.tokens_per_s if rate is None else rate),
        float(cfg.ttft_ms if ttft is None else ttft),
        cfg.model,
    )


async def _stream(writer: asyncio.StreamWriter, cfg: SimEngineConfig, body: dict) -> None:
    n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    model = str(body.get("model") or cfg.model)
    writer.write(_STREAM_HEAD)
    if cfg.ttft_ms > 0:
        await asyncio.sleep(cfg.ttft_ms / 1000)
    writer.write(_event(_chunk(model, {"role": "assistant", "content": None})))
    token = _event(_chunk(model, {"content": " w"}))
    interval = 1.0 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
    t0 = time.perf_counter()
    for i in range(n):
        if interval:
            wait = t0 + i * interval - time.perf_counter()
            if wait > 0.0002:  # below that, a timer costs more than it paces
                await writer.drain()
                await asyncio.sleep(wait)
        writer.write(token)
        if not interval and i % 16 == 15:
            await writer.drain()
            await asyncio.sleep(0)  # let the other streams write too
    writer.write(_event(_chunk(model, {}, "length")))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"completion_tokens": n, "prompt_tokens": 8, "total_tokens": n + 8}
        writer.write(
            _event(
                {
                    "choices": [],
                    "created": int(time.time()),
                    "id": "chatcmpl-sim",
                    "model": model,
                    "object": "chat.completion.chunk",
                    "usage": usage,
                }
            )
        )
    writer.write(_DONE)
    await writer.drain()


async def _complete(writer: asyncio.StreamWriter, cfg: SimEngineConfig, body: dict) -> None:
    n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    total = cfg.ttft_ms / 1000 + (n / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0)
    if total > 0:
        await asyncio.sleep(total)
    out = {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or cfg.model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": " w" * n},
            }
        ],
        "usage": {"completion_tokens": n, "prompt_tokens": 8, "total_tokens": n + 8},
    }
    writer.write(_response(200, json.dumps(out).encode()))
    await writer.drain()


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: SimEngineConfig
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            path = path.split("?", 1)[0]
            if method == "GET" and path == "/health":
                writer.write(_response(200, b'{"status":"ok"}'))
            elif method == "GET" and path == "/v1/models":
                writer.write(
                    _response(
                        200,
                        json.dumps(
                            {
                                "object": "list",
                                "data": [{"id": cfg.model, "object": "model", "owned_by": "sim"}],
                            }
                        ).encode(),
                    )
                )
            elif method == "GET" and path == "/metrics":
                writer.write(_response(200, b"", "text/plain"))
            elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                body = json.loads(raw or b"{}")
                await (_stream if body.get("stream") else _complete)(
                    writer, _per_request(cfg, body), body
                )
            else:
                writer.write(_response(404, b'{"error":{"message":"not found"}}'))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, cfg: SimEngineConfig) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: _handle(r, w, cfg), host, port, backlog=4096)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="per stream; 0 = unpaced")
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--model", default=MODEL)
    args = p.parse_args()
    cfg = SimEngineConfig(args.tokens_per_s, args.ttft_ms, args.model)

    async def run() -> None:
        server = await serve(args.host, args.port, cfg)
        print(f"sim engine on http://{args.host}:{args.port}: {cfg.describe()}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
