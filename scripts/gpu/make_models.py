"""Planning inputs for the GPU machines, which have no model hub access (docs/gpu.md).

    python scripts/gpu/make_models.py DIR

* ``DIR/hf/Llama-3.1-8B-Instruct`` and ``DIR/hf/Llama-3.1-70B-Instruct``: Hugging Face-format
  directories with the models' published ``config.json`` shape and *sparse* ``*.safetensors``
  shards whose sizes add up to the bf16 checkpoint (params × 2 bytes). The planner reads
  only ``config.json`` and the shards' sizes, so the plan is the one the real checkpoint gets;
  no weights are there, and nothing can be served from these directories.
* ``DIR/synthetic/Llama-3.1-70B-Instruct-header-only.F16.gguf``: a GGUF header with Llama-3.1-70B's
  shape (no tensors), extended as a sparse file to the size of a 70B F16 GGUF, to show a
  llama.cpp plan that needs the VRAM of two GPUs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LLAMA_31 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}
#: name → (params, layers, hidden, intermediate, heads, shards)
SHAPES = {
    "Llama-3.1-8B-Instruct": (8_030_261_248, 32, 4096, 14336, 32, 4),
    "Llama-3.1-70B-Instruct": (70_553_706_496, 80, 8192, 28672, 64, 30),
}


def hf_dir(root: Path, name: str) -> None:
    params, layers, hidden, inter, heads, shards = SHAPES[name]
    d = root / "hf" / name
    d.mkdir(parents=True, exist_ok=True)
    config = {
        **LLAMA_31,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    total = params * 2
    for i in range(shards):
        size = total // shards + (total % shards if i == shards - 1 else 0)
        path = d / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb"):
            pass
        os.truncate(path, size)  # sparse: no blocks are written


def synthetic_gguf(root: Path) -> None:
    from gguf import GGUFWriter, LlamaFileType

    d = root / "synthetic"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "Llama-3.1-70B-Instruct-header-only.F16.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_name("Llama-3.1-70B-Instruct (header only, synthetic)")
    w.add_block_count(80)
    w.add_embedding_length(8192)
    w.add_feed_forward_length(28672)
    w.add_head_count(64)
    w.add_head_count_kv(8)
    w.add_context_length(131072)
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    os.truncate(path, 70_553_706_496 * 2)  # the size of the F16 file, sparse


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in SHAPES:
        hf_dir(root, name)
    synthetic_gguf(root)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>16,}  {p.relative_to(root)}")
