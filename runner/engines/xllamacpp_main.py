"""Entry point of the engine *process* for the xllamacpp engine.

llama.cpp's native server runs inside ``xllamacpp.Server``; running it in a
process of its own (rather than in the runner) lets the supervisor kill and
restart it without taking the tunnel down, and keeps its threads off the
runner's event loop.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xllamacpp-engine")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--alias", default="")
    # Embedding mode also answers /v1/embeddings; generation keeps working.
    parser.add_argument("--embedding", action="store_true")
    # Reranking mode answers /v1/rerank (llama-server's --reranking); generation keeps working.
    parser.add_argument("--rerank", action="store_true")
    # A Jinja chat template to use instead of the model's (tool calls: runner/tool_support.py).
    parser.add_argument("--chat-template-file", default="")
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.port = args.port
    params.hostnames = [args.host]
    params.cache_prompt = True
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.n_gpu_layers = args.gpu_layers
    if args.threads > 0:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.embedding:
        params.embedding = True
        params.pooling_type = 1  # mean: llama.cpp's OpenAI endpoint refuses pooling "none"
    if args.rerank:
        params.embedding = True
        params.pooling_type = 4  # LLAMA_POOLING_TYPE_RANK, as llama-server's --reranking sets
    params.use_jinja = True  # llama-server's --jinja: tools go through the chat template
    if args.chat_template_file:
        with open(args.chat_template_file, encoding="utf-8") as f:
            params.chat_template = f.read()
    if args.alias:
        params.model_alias = {args.alias} if isinstance(params.model_alias, set) else args.alias

    server = xllamacpp.Server(params)
    print(f"xllamacpp listening on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
