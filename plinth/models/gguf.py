"""Read and write llama.cpp GGUF files of Llama-family decoders (GGUF architectures "llama" and "qwen2").

`read_gguf` gives the model as Hugging Face sees it: a config.json mapping (then a `GPTConfig` through `hf.py`), float32
tensors under HF names (= GPT's parameter names), the raw metadata (the tokenizer is rebuilt from it by
`plinth.data.gguf_tokenizer`) and the chat template. `write_gguf` goes the other way with llama.cpp's tensor names,
layout and metadata keys. Mistral has no GGUF architecture of its own: llama.cpp writes it as "llama", and so do we.

Two layout facts (llama.cpp's `convert_hf_to_gguf.py`):
- q/k rows: HF's RoPE rotates dimension i of a head with i + head_dim/2 (`rotate_half`); llama.cpp's pairs 2i with 2i+1,
  so its converter interleaves each head's two halves. Undoing that needs *this projection's* head count: the KV head
  count for k under grouped-query attention (a classic bug is using the query head count for both).
- A file with no `output.weight` has its LM head tied to `token_embd.weight`.

Every bad input raises a one-line PlinthError naming the file and the problem; nothing is guessed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.config import PlinthError
from plinth.models.gpt import GPT, GPTConfig
from plinth.models.hf import gpt_config_from_hf
from plinth.models.layers import rope_inv_freq
from plinth.models.registry import on_meta

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# GGML types read_gguf dequantizes (names of gguf.GGMLQuantizationType); each is checked against a transcription of
# ggml's reference C in tests/test_gguf.py.
READ_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

# export dtype (what 2-D weights are stored as) -> llama.cpp's general.file_type for it
WRITE_DTYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_HF_GLOBAL = {hf: g for g, hf in _GLOBAL_NAMES.items()}
_HF_BLOCK = {hf: g for g, hf in _BLOCK_NAMES.items()}
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors: how it stores llama3 RoPE scaling


@dataclass
class GGUFModel:
    """What `read_gguf` found in a file. `tensors` are float32 under HF/GPT state-dict names (a tied head absent)."""

    path: str
    architecture: str  # "llama" or "qwen2"
    hf_config: dict[str, Any]  # a config.json mapping transformers (and `gpt_config_from_hf`) builds the model from
    config: GPTConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)  # every key/value in the file, tokenizer.ggml.* included
    special_ids: dict[str, int | None]  # bos/eos/unk/pad token ids (None where the file has none)
    chat_template: str | None = field(repr=False)
    tensor_types: dict[str, str] = field(repr=False)  # HF name -> GGML type in the file, e.g. "Q4_1"


def _fail(path: Any, message: str) -> None:
    raise PlinthError(f"{path}: {message}")


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


# ----------------------------------------------------------------------------------------------------------------------
# Names and the q/k row permutation


def gguf_to_hf_name(name: str) -> str | None:
    """HF state-dict name for a llama.cpp tensor name, or None if it is not a Llama-block weight."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if match and match[2] in _BLOCK_NAMES:
        return f"model.layers.{match[1]}.{_BLOCK_NAMES[match[2]]}"
    return None


def hf_to_gguf_name(name: str) -> str | None:
    """llama.cpp tensor name for an HF state-dict name, or None if it has none."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if match and match[2] in _HF_BLOCK:
        return f"blk.{match[1]}.{_HF_BLOCK[match[2]]}"
    return None


def permute_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> llama.cpp row order of a q or k projection (weight (rows, d_model) or bias (rows,)).

    `n_head` is the number of heads in *this* projection: n_kv_head for k under grouped-query attention.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # (n_head, half, 2, ...)


def unpermute_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp -> HF row order of a q or k projection; the inverse of `permute_rope_rows`."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # (n_head, 2, half, ...)


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """HF state-dict name -> shape of every tensor a GPT of `config` stores (a tied lm_head left out)."""
    model = on_meta(GPT, config)
    skip = {"lm_head.weight"} if config.tie_embeddings else set()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}


def _check_shapes(path: Any, shapes: dict[str, tuple], config: GPTConfig) -> None:
    """Every expected tensor present with its shape, and nothing else."""
    expected = expected_shapes(config)
    for name in shapes:
        if name not in expected:
            _fail(path, f"unexpected tensor {hf_to_gguf_name(name) or name} for this model's configuration")
    for name, shape in expected.items():
        if name not in shapes:
            _fail(path, f"missing tensor {hf_to_gguf_name(name) or name}")
        if tuple(shapes[name]) != shape:
            _fail(path, f"tensor {hf_to_gguf_name(name) or name} has shape {tuple(shapes[name])}, expected {shape}")


# ----------------------------------------------------------------------------------------------------------------------
# llama3 RoPE scaling <-> rope_freqs.weight


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight` for llama3 scaling: per frequency, what the base frequency is divided by."""
    inv_freq = rope_inv_freq(head_dim, theta).double().numpy()
    wavelen = 2 * math.pi / inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    smooth = (original / wavelen - low) / (high - low)
    band = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, band)).astype(np.float32)


def _llama3_candidates(factors: np.ndarray, head_dim: int, theta: float) -> list[dict[str, Any]]:
    """Parameter sets that may have produced `factors`: a fit of the blended band, then Llama 3.1's own."""
    factor = float(str(np.float32(factors.max())))
    candidates = []
    x = rope_inv_freq(head_dim, theta).double().numpy() / (2 * math.pi)  # 1 / wavelength
    f = factors.astype(np.float64)
    band = (f > 1 + 1e-4) & (f < factor * (1 - 1e-4))
    if band.sum() >= 2 and factor > 1:
        # In the band s = original * x / (high - low) - low / (high - low) is linear in x; with low_freq_factor = 1
        # (every published llama3 config) the slope and intercept give high_freq_factor and the original context.
        s = (1 / f[band] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(x[band], s, 1)
        if intercept < 0:
            high, original = 1 - 1 / intercept, -slope / intercept
            candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": float(round(high, 4)),
                               "original_max_position_embeddings": int(round(original))})
    candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
    return candidates


def _rope_scaling_from_factors(path: Any, factors: np.ndarray, head_dim: int, theta: float) -> dict | None:
    if factors.shape != (head_dim // 2,):
        _fail(path, f"{ROPE_FREQS} has shape {factors.shape}, expected ({head_dim // 2},)")
    if np.all(factors == 1.0):
        return None
    for candidate in _llama3_candidates(factors, head_dim, theta):
        if np.allclose(llama3_rope_factors(head_dim, theta, candidate), factors, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", **candidate}
    _fail(path, f"{ROPE_FREQS} does not match any llama3 RoPE scaling this reader can express")


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        _fail(path, "no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        _fail(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(path)
    except Exception as error:  # gguf raises many types on a cut or corrupt file; the user needs one message
        _fail(path, f"truncated or corrupt GGUF file ({_one_line(error)})")
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:  # the reader memory-maps without checking the file is long enough
            _fail(path, f"truncated GGUF file: tensor {t.name} ends past the end of the file")
    return reader


def _metadata(path: Path, reader) -> dict[str, Any]:
    meta = {}
    for key, value in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own header pseudo-fields
            continue
        try:
            meta[key] = value.contents()
        except Exception as error:
            _fail(path, f"metadata {key} is unreadable ({_one_line(error)})")
    return meta


def _clean_float(value: float) -> float:
    """A float32 metadata value as its shortest decimal (9.999999747378752e-06 -> 1e-05): the same float32 bits."""
    return float(str(np.float32(value)))


def _meta_int(path: Any, meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, list):
        _fail(path, f"{key} varies per layer, which is not supported")
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(path, f"metadata {key} is missing or not a positive integer ({value!r})")
    return value


def _head_dim(path: Any, arch: str, meta: dict[str, Any], shapes: dict[str, tuple], n_head: int) -> int:
    q_rows = shapes.get("blk.0.attn_q.weight", (0,))[0]
    if q_rows == 0 or q_rows % n_head or (q_rows // n_head) % 2:
        _fail(path, f"blk.0.attn_q.weight rows ({q_rows}) do not split into {n_head} heads of even size")
    head_dim = q_rows // n_head
    for key in (f"{arch}.attention.key_length", f"{arch}.attention.value_length", f"{arch}.rope.dimension_count"):
        if meta.get(key, head_dim) != head_dim:  # a smaller rope.dimension_count would be partial rotary
            _fail(path, f"{key} = {meta[key]} differs from the head size {head_dim}; not supported")
    return head_dim


def _rope(path: Any, arch: str, meta: dict[str, Any], rope_freqs: np.ndarray | None, head_dim: int):
    theta = _clean_float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        _fail(path, f"{arch}.rope.scaling.type {kind!r} is not supported (only none, linear, llama3 rope_freqs)")
    if kind == "linear" and rope_freqs is not None:
        _fail(path, f"both linear RoPE scaling and {ROPE_FREQS} are present")
    if kind == "linear":
        factor = meta.get(f"{arch}.rope.scaling.factor")
        if not factor:
            _fail(path, f"{arch}.rope.scaling.type is linear but {arch}.rope.scaling.factor is missing")
        return theta, {"rope_type": "linear", "factor": _clean_float(factor)}
    if rope_freqs is None:
        return theta, None
    return theta, _rope_scaling_from_factors(path, rope_freqs, head_dim, theta)


def _attention_bias(path: Any, arch: str, shapes: dict[str, tuple]) -> bool:
    """HF `attention_bias` (llama: q, k, v and o biases) from layer 0's bias tensors; other combinations refused."""
    have = {kind: f"blk.0.attn_{kind}.bias" in shapes for kind in ("q", "k", "v", "output")}
    qkv = have["q"] and have["k"] and have["v"]
    if (have["q"] or have["k"] or have["v"]) and not qkv:
        _fail(path, "only some of the q/k/v projections have biases; not supported")
    if arch == "qwen2":
        if not qkv or have["output"]:
            _fail(path, "a qwen2 model needs q/k/v biases and no attn_output bias")
        return True  # Qwen2Config has no switch: q/k/v biases are always there
    if qkv != have["output"]:
        _fail(path, "llama attention biases must cover q, k, v and output together (HF attention_bias)")
    return qkv


def special_token_ids(meta: dict[str, Any], path: Any) -> dict[str, int | None]:
    """bos/eos/unk/pad ids from `tokenizer.ggml.*` metadata (None where absent), checked against the vocabulary."""
    n_tokens = len(meta.get("tokenizer.ggml.tokens") or [])
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    ids: dict[str, int | None] = {}
    for name, key in keys.items():
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens):
            _fail(path, f"tokenizer.ggml.{key} = {value!r} is not a token id below {n_tokens}")
        ids[name] = value
    return ids


def _hf_config(path: Any, arch: str, meta: dict[str, Any], shapes: dict[str, tuple],
               rope_freqs: np.ndarray | None) -> dict[str, Any]:
    """An HF LlamaConfig / Qwen2Config mapping from llama.cpp metadata, cross-checked with tensor shapes."""
    key = f"{arch}.{{}}".format
    if "token_embd.weight" not in shapes:
        _fail(path, "missing tensor token_embd.weight")
    n_head = _meta_int(path, meta, key("attention.head_count"))
    n_kv_head = _meta_int(path, meta, key("attention.head_count_kv"), n_head)
    head_dim = _head_dim(path, arch, meta, shapes, n_head)
    vocab_size = shapes["token_embd.weight"][0]
    if meta.get(key("vocab_size"), vocab_size) != vocab_size:
        _fail(path, f"{key('vocab_size')} = {meta[key('vocab_size')]} but token_embd.weight has {vocab_size} rows")
    theta, rope_scaling = _rope(path, arch, meta, rope_freqs, head_dim)
    if key("attention.layer_norm_rms_epsilon") not in meta:
        _fail(path, f"metadata {key('attention.layer_norm_rms_epsilon')} is missing")
    ids = special_token_ids(meta, path)
    config = {
        "model_type": arch,
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": _meta_int(path, meta, key("embedding_length")),
        "intermediate_size": _meta_int(path, meta, key("feed_forward_length")),
        "num_hidden_layers": _meta_int(path, meta, key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "max_position_embeddings": _meta_int(path, meta, key("context_length")),
        "rms_norm_eps": _clean_float(meta[key("attention.layer_norm_rms_epsilon")]),
        "rope_theta": theta,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in shapes,  # llama.cpp drops output.weight when tied
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
    }
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    if ids["pad"] is not None:
        config["pad_token_id"] = ids["pad"]
    if arch == "qwen2":
        _attention_bias(path, arch, shapes)  # checks the biases are there
    else:
        config["attention_bias"] = _attention_bias(path, arch, shapes)
    return config


def _dequantized(path: Any, t) -> torch.Tensor:
    from gguf.quants import dequantize

    if t.tensor_type.name not in READ_TYPES:
        _fail(path, f"tensor {t.name} has type {t.tensor_type.name}, which this reader does not dequantize (supported: "
                    f"{', '.join(READ_TYPES)})")
    # np.array copies: F32 data is a view into the memory-mapped file
    return torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))


def _hf_shapes(path: Any, shapes: dict[str, tuple], arch: str) -> dict[str, tuple]:
    """The file's tensor shapes under HF names; a tensor a Llama block does not have is an error."""
    hf_shapes = {}
    for name, shape in shapes.items():
        if name == ROPE_FREQS:
            continue
        if gguf_to_hf_name(name) is None:
            _fail(path, f"unexpected tensor {name} for a {arch} model")
        hf_shapes[gguf_to_hf_name(name)] = shape
    return hf_shapes


def _hf_tensors(path: Any, reader, config: GPTConfig, arch: str) -> tuple[dict, dict]:
    """Dequantized float32 tensors under HF names, q/k rows back in HF order, plus each tensor's GGML type."""
    tensors, types = {}, {}
    for t in reader.tensors:
        if t.name == ROPE_FREQS:
            continue  # folded into rope_scaling
        name = gguf_to_hf_name(t.name)
        w = _dequantized(path, t)
        if arch == "llama" and re.search(r"\.attn_(q|k)\.", t.name):  # llama.cpp permutes llama's q/k, not qwen2's
            w = unpermute_rope_rows(w, config.n_head if ".attn_q." in t.name else config.n_kv_head)
        tensors[name] = w
        types[name] = t.tensor_type.name
    return tensors, types


def read_gguf(path: str | os.PathLike) -> GGUFModel:
    """Read a llama/qwen2 GGUF file: config, float32 HF-named tensors, metadata (tokenizer), chat template.

    Raises PlinthError (one line, naming the file) for a missing, truncated or non-GGUF file, an unsupported
    architecture, tensor type or RoPE scaling, and tensors that do not match the metadata.
    """
    path = Path(path)
    reader = _open(path)
    meta = _metadata(path, reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        _fail(path, f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    rope_freqs = next((_dequantized(path, t).numpy() for t in reader.tensors if t.name == ROPE_FREQS), None)
    hf_config = _hf_config(path, arch, meta, shapes, rope_freqs)
    try:
        config = gpt_config_from_hf(hf_config, name=str(meta.get("general.name") or path.stem))
    except PlinthError as e:
        raise PlinthError(f"{path}: {e}") from None
    _check_shapes(path, _hf_shapes(path, shapes, arch), config)  # before any tensor is unpacked
    tensors, types = _hf_tensors(path, reader, config, arch)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if len(tokens) > config.vocab_size:
        _fail(path, f"{len(tokens)} tokens but token_embd.weight has only {config.vocab_size} rows")
    return GGUFModel(path=str(path), architecture=arch, hf_config=hf_config, config=config, tensors=tensors,
                     metadata=meta, special_ids=special_token_ids(meta, path),
                     chat_template=meta.get("tokenizer.chat_template"), tensor_types=types)


# ----------------------------------------------------------------------------------------------------------------------
# Writing


def _add_model_metadata(writer, config: GPTConfig, file_type: int, name: str | None) -> None:
    if name:
        writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)  # GGML_QNT_VERSION, which llama.cpp writes into every file
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    if config.rope_scaling and config.rope_scaling["rope_type"] == "linear":
        writer.add_string(f"{writer.arch}.rope.scaling.type", "linear")
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])


def _add_value(writer, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list) and value:
        writer.add_array(key, value)


def _encode(w: np.ndarray, dtype: str):
    """(array, raw GGML type or None) for GGUFWriter.add_tensor; 1-D tensors stay F32 as llama.cpp keeps them."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if w.ndim == 1 or dtype == "f32":
        return w, None
    if dtype == "f16":
        return w.astype(np.float16), None
    if dtype == "bf16":
        return quantize(w, GGMLQuantizationType.BF16), GGMLQuantizationType.BF16
    if w.shape[-1] % 32:  # Q8_0 blocks are 32 wide; llama.cpp falls back to F16 for such rows too
        return w.astype(np.float16), None
    return quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def _gguf_arrays(tensors: dict[str, torch.Tensor], config: GPTConfig, arch: str):
    """(llama.cpp name, float32 numpy array) in llama.cpp's order, q/k rows permuted for llama."""
    names = ["model.embed_tokens.weight"]
    names += [n for i in range(config.n_layer) for n in sorted(tensors) if n.startswith(f"model.layers.{i}.")]
    names += ["model.norm.weight"] + ([] if config.tie_embeddings else ["lm_head.weight"])
    for name in names:
        w = tensors[name].detach().to(torch.float32).cpu()
        if arch == "llama" and re.search(r"\.(q|k)_proj\.", name):
            w = permute_rope_rows(w, config.n_head if ".q_proj." in name else config.n_kv_head)
        yield hf_to_gguf_name(name), np.ascontiguousarray(w.numpy())


def write_gguf(path: str | os.PathLike, config: GPTConfig, tensors: dict[str, torch.Tensor],
               tokenizer_metadata: dict[str, Any] | None = None, chat_template: str | None = None, dtype: str = "f32",
               name: str | None = None) -> Path:
    """Write a llama.cpp GGUF file of a GPT (`config` + its state dict under HF names); returns the path.

    Architecture "qwen2" for q/k/v-only biases, else "llama" (q/k rows permuted as llama.cpp's converter does). 2-D
    weights are stored as `dtype` ("f32", "f16", "bf16" or "q8_0"); norms and biases stay F32; a tied lm_head is left
    out. `tokenizer_metadata` is the `tokenizer.ggml.*` mapping (`plinth.data.gguf_tokenizer.gguf_tokenizer_metadata`).
    Written to a temporary name and renamed, so a failure never leaves a partial file at `path`.
    """
    from gguf import GGUFWriter

    path = Path(path)
    if not path.parent.is_dir():
        _fail(path, f"folder {path.parent} does not exist")
    if dtype not in WRITE_DTYPES:
        _fail(path, f"dtype {dtype!r} is not supported (supported: {', '.join(WRITE_DTYPES)})")
    if config.qkv_bias and config.attention_bias:
        _fail(path, "a model with both attention_bias and qkv_bias has no GGUF architecture")
    arch = "qwen2" if config.qkv_bias else "llama"
    if config.rope_scaling and config.rope_scaling["rope_type"] == "llama3" and arch == "qwen2":
        _fail(path, "llama3 RoPE scaling is only written for llama models (llama.cpp reads rope_freqs.weight there)")
    given = {k: tuple(v.shape) for k, v in tensors.items()
             if not k.endswith("rotary_emb.inv_freq") and not (config.tie_embeddings and k == "lm_head.weight")}
    _check_shapes(path, given, config)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = GGUFWriter(tmp, arch)
    try:
        _add_model_metadata(writer, config, WRITE_DTYPES[dtype], name)
        for key, value in (tokenizer_metadata or {}).items():
            _add_value(writer, key, value)
        if chat_template:
            writer.add_chat_template(chat_template)
        if config.rope_scaling and config.rope_scaling["rope_type"] == "llama3":
            writer.add_tensor(ROPE_FREQS, llama3_rope_factors(config.head_dim, config.rope_theta, config.rope_scaling))
        for gguf_name, array in _gguf_arrays(tensors, config, arch):
            encoded, raw_type = _encode(array, dtype)
            writer.add_tensor(gguf_name, encoded, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)  # only still there if something above failed
    return path
