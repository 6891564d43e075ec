"""Write a Hugging Face safetensors directory from a GGUF, with the image's transformers
(docs/gpu.md).

The GPU machine cannot download weights, and the runner plans vLLM for Hugging Face-format
models only; the embedded SmolLM2-135M-Instruct GGUF is the one real model there. transformers
loads a GGUF by dequantizing it (Q4_1 → float32); this writes those weights as bfloat16
safetensors with the config, the tokenizer and the GGUF's own chat template (read with the
``gguf`` package, so chat completions format prompts as the model was trained).

    python scripts/gpu/gguf_to_hf.py MODEL.gguf OUT_DIR [--name SmolLM2-135M-Instruct]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer


def chat_template(path: Path) -> str | None:
    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    src, name = str(args.gguf.parent), args.gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16)
    # The loaded model is marked "quantized with gguf", which save_pretrained refuses; its weights
    # are plain dequantized tensors, so a model built from the same config takes them as they are.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"weights do not match the config: {result}")
    model.tie_weights()
    del loaded
    template = chat_template(args.gguf)
    if template and not getattr(tok, "chat_template", None):
        tok.chat_template = template
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    if template:  # vLLM reads the template from tokenizer_config.json or chat_template.jinja
        (args.out / "chat_template.jinja").write_text(template)
    cfg = json.loads((args.out / "config.json").read_text())
    files = sorted(p.name for p in args.out.iterdir())
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out} in {time.perf_counter() - t0:.1f} s: {params:,} parameters, "
        f"{cfg.get('architectures')}, dtype {cfg.get('dtype') or cfg.get('torch_dtype')}, "
        f"tie_word_embeddings {cfg.get('tie_word_embeddings')}, chat template "
        f"{'yes' if template else 'no'}; files {files}"
    )
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    print(
        "transformers check:",
        repr(tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)),
    )


if __name__ == "__main__":
    main()
