"""What a model needs in memory: its shape, read from a GGUF file, a Hugging Face
directory, or (as an estimate) a table of well-known model ids.

The planner only needs a few numbers: weight bytes, KV-cache bytes per token,
the trained context length and the format (which decides the engine family).
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, computed_field

from outpost.runner.tool_support import TemplateTools, template_tools

__all__ = [
    "KNOWN_MODELS",
    "ModelNotFoundError",
    "ModelSpec",
    "kv_bytes_per_token",
    "lookup_known",
    "read_gguf",
    "read_gguf_metadata",
    "read_hf_dir",
    "resolve_model",
]

#: llama.cpp and vLLM both keep the KV cache in 16-bit floats unless told otherwise.
KV_BYTES_PER_ELEMENT = 2
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class ModelNotFoundError(LookupError):
    """A ``--model`` that is neither a file, a model directory nor a known id."""


def kv_bytes_per_token(
    layers: int, kv_heads: int, head_dim: int, bytes_per_element: int = KV_BYTES_PER_ELEMENT
) -> int:
    """Keys and values (the 2) for every layer and KV head, per token."""
    return 2 * layers * kv_heads * head_dim * bytes_per_element


class ModelSpec(BaseModel):
    name: str
    format: Literal["gguf", "hf"]
    #: "gguf" file, "hf_dir" read from config.json, "known_id" estimated from the table.
    source: Literal["gguf", "hf_dir", "known_id"]
    #: File or directory path; the hub id for ``known_id``.
    location: str
    architecture: str | None = None
    layers: int
    embedding_length: int
    head_count: int
    kv_head_count: int
    head_dim: int
    context_length: int
    #: GGUF file type ("Q4_K_M"), HF quantization method ("awq") or dtype ("bfloat16").
    quantization: str | None = None
    weights_bytes: int
    params: int | None = None
    #: True when numbers come from the table, not from files on this machine.
    estimated: bool = False
    #: What a GGUF's chat template does with tools (runner/tool_support.py); None: not a GGUF.
    chat_template_tools: TemplateTools | None = None

    # mypy refuses a decorator over @property (python/mypy#1362);
    # pydantic documents computed_field this way.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.layers, self.kv_head_count, self.head_dim)


# --- GGUF ------------------------------------------------------------------


_SCALAR_CODES = "BbHhIif?"  # GGUFValueType 0..7, in order; 10..12 below
_WIDE_CODES = {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this (the tokenizer's vocabulary and merges) are skipped, not decoded.
_MAX_ARRAY = 4096


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF key/value header, without the tokenizer's long arrays.

    ``gguf.GGUFReader`` decodes every vocabulary entry into numpy views: about 9 s
    for the 98 MB embedded model on 2 cores, on every ``runner plan`` and start.
    Scanning the header over an mmap and skipping long arrays takes milliseconds;
    tests check it agrees with GGUFReader on the embedded model.
    """
    from gguf import GGUF_MAGIC, GGUFValueType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if struct.unpack_from("<I", buf, 0)[0] != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # big-endian files
        version, _tensors, count = struct.unpack_from(order + "IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")

        def code(kind: int) -> str | None:
            return _SCALAR_CODES[kind] if kind < _STRING else _WIDE_CODES.get(kind)

        def value(kind: int, pos: int, keep: bool = True) -> tuple[Any, int]:
            if kind == _STRING:
                (n,) = struct.unpack_from(order + "Q", buf, pos)
                text = (
                    bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", "replace") if keep else None
                )
                return text, pos + 8 + n
            if kind == _ARRAY:
                item, n = struct.unpack_from(order + "IQ", buf, pos)
                pos += 12
                keep = keep and n <= _MAX_ARRAY
                fixed = code(item)
                if fixed is not None:
                    fmt = f"{order}{n}{fixed}"
                    items = list(struct.unpack_from(fmt, buf, pos)) if keep else None
                    return items, pos + struct.calcsize(fmt)
                if item == _STRING and not keep:  # the vocabulary: hop over it
                    length = struct.Struct(order + "Q").unpack_from
                    for _ in range(n):
                        pos += 8 + length(buf, pos)[0]
                    return None, pos
                items = []
                for _ in range(n):
                    one, pos = value(item, pos, keep)
                    items.append(one)
                return (items if keep else None), pos
            fmt = order + (code(kind) or "")
            if fmt == order:
                raise ValueError(f"{path}: unknown GGUF value type {GGUFValueType(kind)!r}")
            return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)

        metadata: dict[str, Any] = {}
        pos = 24
        for _ in range(count):
            key, pos = value(_STRING, pos)
            (kind,) = struct.unpack_from(order + "I", buf, pos)
            metadata[key], pos = value(kind, pos + 4)
        return metadata


def _gguf_size(path: Path) -> int:
    """Bytes of weights: a split GGUF (``-00001-of-00003.gguf``) counts every shard."""
    match = _SHARD.match(path.name)
    if not match:
        return path.stat().st_size
    shards = path.parent.glob(f"{match['stem']}-*-of-{match['count']}.gguf")
    return sum(shard.stat().st_size for shard in shards)


def _served_name(path: Path, quantization: str | None) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``: the quantization is
    advertised separately, and lower case spares clients guessing the file's spelling."""
    match = _SHARD.match(path.name)
    stem = (match["stem"] if match else path.stem).lower()
    for sep in (".", "-", "_"):
        suffix = f"{sep}{quantization}".lower()
        if quantization and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_gguf(path: str | Path) -> ModelSpec:
    """Shape and size of a GGUF model from its metadata (no tensor data is read)."""
    from gguf import LlamaFileType

    path = Path(path)
    metadata = read_gguf_metadata(path)
    arch = metadata.get("general.architecture") or "llama"

    def meta(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}")
        return default if value is None else value

    layers = int(meta("block_count"))
    embedding = int(meta("embedding_length"))
    heads = meta("attention.head_count")
    kv_heads = meta("attention.head_count_kv", heads)
    # Some architectures give per-layer head counts; the KV cache holds their sum.
    heads_n = max(heads) if isinstance(heads, list) else int(heads)
    if isinstance(kv_heads, list):
        kv_total = sum(int(h) for h in kv_heads)
        kv_heads_n = max(1, round(kv_total / max(layers, 1)))
    else:
        kv_heads_n = int(kv_heads)
    head_dim = int(meta("attention.key_length", embedding // max(heads_n, 1)))
    file_type = metadata.get("general.file_type")
    quant = None
    if file_type is not None:
        try:
            quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = f"type{file_type}"
    size_label = metadata.get("general.size_label")
    return ModelSpec(
        name=_served_name(path, quant),
        format="gguf",
        source="gguf",
        location=str(path),
        architecture=arch,
        layers=layers,
        embedding_length=embedding,
        head_count=heads_n,
        kv_head_count=kv_heads_n,
        head_dim=head_dim,
        context_length=int(meta("context_length", 2048)),
        quantization=quant,
        weights_bytes=_gguf_size(path),
        params=_parse_size_label(size_label) if isinstance(size_label, str) else None,
        chat_template_tools=template_tools(_text(metadata.get("tokenizer.chat_template"))),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse_size_label(label: str) -> int | None:
    """``"135M"`` → 135_000_000; labels like ``"8x7B"`` multiply."""
    match = re.fullmatch(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])", label.strip(), re.IGNORECASE)
    if not match:
        return None
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match[3].upper()]
    return int(int(match[1] or 1) * float(match[2]) * scale)


# --- Hugging Face ----------------------------------------------------------


def read_hf_dir(path: str | Path) -> ModelSpec:
    """Shape from ``config.json``; weight bytes = the sum of ``*.safetensors`` sizes."""
    path = Path(path)
    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    # Multimodal checkpoints nest the language model's shape under text_config.
    text = {**config, **config.get("text_config", {})}
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if weights == 0:
        weights = sum(p.stat().st_size for p in path.glob("pytorch_model*.bin"))
    quant_cfg = config.get("quantization_config") or {}
    dtype = text.get("torch_dtype") or text.get("dtype")
    archs = config.get("architectures") or [None]
    return ModelSpec(
        name=path.name,
        format="hf",
        source="hf_dir",
        location=str(path),
        architecture=archs[0] or config.get("model_type"),
        layers=int(text["num_hidden_layers"]),
        embedding_length=hidden,
        head_count=heads,
        kv_head_count=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        context_length=int(text.get("max_position_embeddings") or 2048),
        quantization=quant_cfg.get("quant_method") or dtype,
        weights_bytes=weights,
    )


#: Well-known hub ids, for planning before anything is downloaded. Shapes are from
#: the models' published config.json; weights are ESTIMATES: params × 2 bytes (bf16).
#: id → (params, layers, hidden, heads, kv_heads, head_dim, context)
KNOWN_MODELS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (134_515_008, 30, 576, 9, 3, 64, 8192),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": (1_711_376_384, 24, 2048, 32, 32, 64, 8192),
    "Qwen/Qwen2.5-0.5B-Instruct": (494_032_768, 24, 896, 14, 2, 64, 32768),
    "Qwen/Qwen2.5-7B-Instruct": (7_615_616_512, 28, 3584, 28, 4, 128, 32768),
    "Qwen/Qwen2.5-72B-Instruct": (72_706_203_648, 80, 8192, 64, 8, 128, 32768),
    "meta-llama/Llama-3.2-1B-Instruct": (1_235_814_400, 16, 2048, 32, 8, 64, 131072),
    "meta-llama/Llama-3.2-3B-Instruct": (3_212_749_824, 28, 3072, 24, 8, 128, 131072),
    "meta-llama/Llama-3.1-8B-Instruct": (8_030_261_248, 32, 4096, 32, 8, 128, 131072),
    "meta-llama/Llama-3.1-70B-Instruct": (70_553_706_496, 80, 8192, 64, 8, 128, 131072),
    "meta-llama/Llama-3.3-70B-Instruct": (70_553_706_496, 80, 8192, 64, 8, 128, 131072),
    "meta-llama/Llama-3.1-405B-Instruct": (405_853_388_800, 126, 16384, 128, 8, 128, 131072),
    "mistralai/Mistral-7B-Instruct-v0.3": (7_248_023_552, 32, 4096, 32, 8, 128, 32768),
    "google/gemma-2-9b-it": (9_241_705_984, 42, 3584, 16, 8, 256, 8192),
}


def lookup_known(model_id: str) -> ModelSpec | None:
    """An estimated spec for a well-known hub id (matched case-insensitively)."""
    canonical = {key.lower(): key for key in KNOWN_MODELS}.get(model_id.lower())
    if canonical is None:
        return None
    params, layers, hidden, heads, kv_heads, head_dim, ctx = KNOWN_MODELS[canonical]
    return ModelSpec(
        name=canonical,
        format="hf",
        source="known_id",
        location=canonical,
        layers=layers,
        embedding_length=hidden,
        head_count=heads,
        kv_head_count=kv_heads,
        head_dim=head_dim,
        context_length=ctx,
        quantization="bfloat16",
        weights_bytes=params * 2,
        params=params,
        estimated=True,
    )


def resolve_model(ref: str | Path) -> ModelSpec:
    """A ``--model`` argument: a GGUF file, an HF directory, or a well-known hub id."""
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return read_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return read_hf_dir(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return read_gguf(ggufs[0])
    known = lookup_known(str(ref))
    if known is not None:
        return known
    raise ModelNotFoundError(
        f"model {str(ref)!r}: not a .gguf file, not a directory with config.json, and not "
        f"a known hub id (known: {', '.join(sorted(KNOWN_MODELS))})"
    )
