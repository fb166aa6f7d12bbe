"""Save and load model folders: Plinth's own (`config.json` + `model.safetensors`) and Hugging Face Llama ones.

A Plinth model folder holds `model.safetensors` (one copy of a tied embedding) and `config.json` (the ModelConfig
fields plus `family` and `format_version`). GPT's parameter names are HF Llama's, so HF conversion only renames
config fields; no weight is permuted. Nothing here downloads or runs remote code: HF folders are read from disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from plinth.common import PlinthError, atomic_write_bytes, atomic_write_json
from plinth.config import ModelConfig
from plinth.models.gpt import GPT

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
_META_KEYS = ("family", "format_version")


# ----------------------------------------------------------------------------------------------------------------------
# Plinth model folders


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a config.json dict; `family`/`format_version` are skipped, unknown or bad fields raise."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(d) - known - set(_META_KEYS))
    if unknown:
        raise PlinthError(f"unknown model config fields: {', '.join(unknown)}")
    try:
        return ModelConfig(**{k: v for k, v in d.items() if k in known})
    except (TypeError, ValueError) as e:
        raise PlinthError(str(e)) from e


def _weights_to_save(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU-ready tensors, with a tied lm_head left out (safetensors refuses aliases)."""
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


def save_model(model: GPT, directory: str | os.PathLike) -> None:
    """Write `model.safetensors` and `config.json` into `directory`, each atomically."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile, whose keys carry a `_orig_mod.` prefix
    directory = Path(directory)
    data = safetensors.torch.save(_weights_to_save(model), metadata={"format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    # The config goes last, so a folder with a config always has its weights beside it.
    atomic_write_json(directory / CONFIG_FILE, {"family": "gpt", "format_version": FORMAT_VERSION,
                                                **asdict(model.config)})


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a PlinthError naming the file."""
    if not path.is_file():
        raise PlinthError(f"{path}: file not found (expected a model folder with {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlinthError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise PlinthError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on CPU, or a PlinthError naming the file."""
    if not path.is_file():
        raise PlinthError(f"{path}: file not found")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise PlinthError(f"{path}: cannot read safetensors weights ({e})") from e


def _build(
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    source: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> GPT:
    """A GPT for `config` holding exactly `tensors`; PlinthError naming `source` when names or shapes differ."""
    # Build on the meta device: no memory and no random init for weights about to be overwritten.
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tensors = dict(tensors)
    if config.tie_embeddings:
        # One matrix serves both; HF folders may still store the lm_head copy.
        expected.pop("lm_head.weight")
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs {tuple(s)}" for k, s in expected.items()
                  if k in tensors and tensors[k].shape != s]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch (file vs config)", mismatched)) if items]
        raise PlinthError(f"{source}: weights do not match the model config; " + "; ".join(parts))
    model.to_empty(device=device)  # also recomputes the RoPE tables, which have no stored values
    model.tie_weights()  # to_empty makes new Parameter objects, which unties them
    model.to(dtype or torch.float32)
    model.load_state_dict(tensors, strict=False)  # strictness checked above, modulo the tied lm_head
    return model


def load_model(directory: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> GPT:
    """Rebuild the GPT saved by `save_model` in `directory` (fp32 unless `dtype` is given)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    raw = _read_json(config_path)
    family = raw.get("family", "gpt")
    if family != "gpt":
        raise PlinthError(f"{config_path}: model family {family!r} is not loadable as a GPT")
    version = raw.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PlinthError(f"{config_path}: format_version {version!r} is newer than this Plinth reads "
                          f"({FORMAT_VERSION}); upgrade plinth")
    try:
        config = model_config_from_dict(raw)
    except PlinthError as e:
        raise PlinthError(f"{config_path}: {e}") from e
    weights_path = directory / WEIGHTS_FILE
    return _build(config, _read_safetensors(weights_path), str(weights_path), device, dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face Llama folders


def to_hf_llama_config(config: ModelConfig) -> dict[str, Any]:
    """`transformers.LlamaConfig` keyword arguments describing the same architecture as `config`."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.seq_len,
        # transformers v5 keeps the RoPE base under rope_parameters (v4 read a top-level rope_theta).
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        # LlamaConfig's defaults (1, 2) are Llama-2's tokenizer ids, wrong for ours; the caller may set real ones.
        "bos_token_id": None,
        "eos_token_id": None,
    }


def _hf_rope_theta(d: dict[str, Any]) -> float:
    """The RoPE base of an HF config dict (v5 `rope_parameters` or v4 `rope_theta` + `rope_scaling`)."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise PlinthError(f"RoPE type {rope_type!r} (scaled RoPE) is not supported; only plain RoPE is")
    return float(params.get("rope_theta", d.get("rope_theta", 10000.0)))


def from_hf_llama_config(d: dict[str, Any]) -> ModelConfig:
    """ModelConfig from an HF Llama config.json dict; PlinthError for Llama variants GPT cannot represent."""
    if d.get("model_type", "llama") != "llama":
        raise PlinthError(f"model_type {d['model_type']!r} is not supported; only 'llama' is")
    if d.get("hidden_act", "silu") != "silu":
        raise PlinthError(f"hidden_act {d['hidden_act']!r} is not supported; only 'silu' is")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise PlinthError("attention_bias / mlp_bias are not supported: GPT's projections have no biases")
    try:
        d_model, n_head = int(d["hidden_size"]), int(d["num_attention_heads"])
        head_dim = d.get("head_dim")
        if head_dim is not None and int(head_dim) * n_head != d_model:
            raise PlinthError(f"head_dim {head_dim} * num_attention_heads {n_head} != hidden_size {d_model}; "
                              f"GPT needs head_dim = hidden_size / num_attention_heads")
        return ModelConfig(
            name="hf-llama",
            vocab_size=int(d["vocab_size"]),
            n_layer=int(d["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=int(d.get("num_key_value_heads") or n_head),
            d_model=d_model,
            d_ff=int(d["intermediate_size"]),
            seq_len=int(d.get("max_position_embeddings", 2048)),
            rope_theta=_hf_rope_theta(d),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),  # LlamaConfig's default, not ModelConfig's
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise PlinthError(f"HF config lacks the field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise PlinthError(f"HF config: {e}") from e


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`."""
    single, index = directory / WEIGHTS_FILE, directory / HF_INDEX_FILE
    if single.is_file():
        tensors = _read_safetensors(single)
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise PlinthError(f"{index}: no 'weight_map' object")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(directory / shard))
    else:
        raise PlinthError(f"{directory}: neither {WEIGHTS_FILE} nor {HF_INDEX_FILE} found "
                          f"(only safetensors checkpoints are read, never pickled .bin files)")
    # Old checkpoints stored the RoPE inverse frequencies; they are recomputed from the config.
    return {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}


def load_hf_llama(directory: str | os.PathLike, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> GPT:
    """A GPT from a local HF Llama folder (config.json + safetensors weights); fp32 unless `dtype` is given."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    try:
        config = from_hf_llama_config(_read_json(config_path))
    except PlinthError as e:
        msg = str(e)
        raise PlinthError(msg if msg.startswith(str(config_path)) else f"{config_path}: {msg}") from e
    return _build(config, _read_hf_weights(directory), str(directory), device, dtype)


def save_hf_llama(model: GPT, directory: str | os.PathLike, extra_config: dict[str, Any] | None = None) -> None:
    """Write a folder `transformers.LlamaForCausalLM.from_pretrained` loads; `extra_config` adds e.g. eos_token_id."""
    model = getattr(model, "_orig_mod", model)
    directory = Path(directory)
    data = safetensors.torch.save(_weights_to_save(model), metadata={"format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    cfg = to_hf_llama_config(model.config)
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": dtype, **cfg,
          "rope_theta": cfg["rope_parameters"]["rope_theta"],  # for transformers < 4.56 readers
          **(extra_config or {})}
    atomic_write_json(directory / CONFIG_FILE, hf)
