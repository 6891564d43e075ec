"""Model specs and Hugging Face directories for planning tests, built without downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from outpost.runner.gguf_meta import ModelSpec

LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
#: Shard sizes of the published Llama-3.1-8B-Instruct safetensors (16.06 GB in all).
LLAMA_31_8B_SHARDS = (4_976_698_672, 4_999_802_720, 4_915_916_176, 1_168_138_808)


def hf_dir(root: Path, name: str, config: dict, shards: tuple[int, ...]) -> Path:
    """A model directory whose safetensors are sparse files of the real sizes."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    for i, size in enumerate(shards, 1):
        with open(path / f"model-{i:05d}-of-{len(shards):05d}.safetensors", "wb") as f:
            os.truncate(f.fileno(), size)
    return path


def gguf_spec(name: str, weights_bytes: int, layers: int = 32, kv_heads: int = 8,
              ctx: int = 131072, quant: str = "Q4_K_M") -> ModelSpec:  # fmt: skip
    """What read_gguf returns for a Llama-3.1-shaped GGUF of the given size."""
    return ModelSpec(name=name, format="gguf", source="gguf", location=f"/models/{name}.gguf",
                     architecture="llama", layers=layers, embedding_length=4096, head_count=32,
                     kv_head_count=kv_heads, head_dim=128, context_length=ctx,
                     quantization=quant, weights_bytes=weights_bytes)  # fmt: skip
