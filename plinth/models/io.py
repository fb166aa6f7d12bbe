"""Save and load model folders of any family, and Hugging Face Llama folders.

A Plinth model folder holds `model.safetensors` (one copy of each tied weight) and `config.json` (`family`,
`format_version` and the family config's fields). The family picks the class from the registry. GPT's parameter
names are HF Llama's, so HF conversion only renames config fields; no weight is permuted. Nothing here downloads or
runs remote code: HF folders are read from disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from plinth.artifacts import FORMAT_VERSION, MODEL_CONFIG, MODEL_WEIGHTS, read_json
from plinth.common import PlinthError, atomic_write_bytes, atomic_write_json
from plinth.models.gpt import GPT, GPTConfig
from plinth.models.registry import config_from_dict, config_to_dict, family_of

HF_INDEX_FILE = "model.safetensors.index.json"


# ----------------------------------------------------------------------------------------------------------------------
# Plinth model folders


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes keys with `_orig_mod.`


def tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that alias an earlier key's tensor (a tied lm_head): stored once, restored by tying."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(key)
        else:
            seen[id(tensor)] = key
    return tied


def weights_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous tensors, each tied alias left out (safetensors refuses aliases)."""
    model = _unwrap(model)
    skip = tied_keys(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in skip}


def save_model(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write `model.safetensors` and `config.json` into `directory`, each atomically (the config last)."""
    model = _unwrap(model)
    save_weights(weights_to_save(model), model.config, directory)


def save_weights(tensors: dict[str, torch.Tensor], config: Any, directory: str | os.PathLike) -> None:
    """Write `tensors` (a state dict without tied aliases) as `model.safetensors` and `config` as `config.json`.

    For weights gathered from a sharded model (FSDP) as well as a live one; each file atomically, the config last.
    """
    directory = Path(directory)
    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    atomic_write_bytes(directory / MODEL_WEIGHTS, data)
    # The config goes last, so a folder with a config always has its weights beside it.
    atomic_write_json(directory / MODEL_CONFIG, {**config_to_dict(config), "format_version": FORMAT_VERSION})


def read_model_config(directory: str | os.PathLike):
    """The family config stored in `directory/config.json`; one-line PlinthError naming the file if it is bad."""
    path = Path(directory) / MODEL_CONFIG
    return config_from_dict(read_json(path, "model config"), str(path))


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on CPU, or a PlinthError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: file not found")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise PlinthError(f"{path}: cannot read safetensors weights ({e})") from e


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `model` in place (no second model is built); PlinthError naming `source` when the names
    or shapes differ from the model's. Tied aliases may be absent (or present: then they must match in shape)."""
    model = _unwrap(model)
    state = model.state_dict()
    optional = tied_keys(model)
    expected = {k: v.shape for k, v in state.items()}
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs {tuple(s)}" for k, s in expected.items()
                  if k in tensors and tensors[k].shape != s]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch (file vs model)", mismatched)) if items]
        raise PlinthError(f"{source}: weights do not match the model config; " + "; ".join(parts))
    with torch.no_grad():
        for key, value in tensors.items():
            if key not in optional:
                state[key].copy_(value)


def build_empty(config: Any, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """A model of `config`'s family with uninitialised weights on `device` (for loading weights into)."""
    # Built on the meta device: no memory and no random init for weights about to be overwritten.
    with torch.device("meta"):
        model = family_of(config).model_class(config)
    model.to_empty(device=device)  # buffers with no stored values (RoPE tables) recompute themselves in _apply
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty makes new Parameter objects, which unties them
    return model.to(dtype or torch.float32)


def load_model(directory: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild the model saved by `save_model` in `directory`, of whichever family its config.json names."""
    directory = Path(directory)
    config = read_model_config(directory)
    model = build_empty(config, device, dtype)
    load_state(model, read_safetensors(directory / MODEL_WEIGHTS), str(directory / MODEL_WEIGHTS))
    return model


def load_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load the weights saved in `directory` into `model` in place, after checking its config matches the model's."""
    directory = Path(directory)
    check_same_config(model, directory)
    load_state(model, read_safetensors(directory / MODEL_WEIGHTS), str(directory / MODEL_WEIGHTS))


def check_same_config(model: nn.Module, directory: str | os.PathLike) -> None:
    """PlinthError naming the differing fields if `directory/config.json` describes another model than `model`."""
    directory = Path(directory)
    saved = read_model_config(directory)
    current = _unwrap(model).config
    a, b = config_to_dict(saved), config_to_dict(current)
    diff = [f"{k} {a[k]!r} vs {b.get(k)!r}" for k in a if k != "name" and b.get(k) != a[k]]
    if diff:
        raise PlinthError(f"{directory / MODEL_CONFIG}: saved for a different model config ({'; '.join(diff[:4])}); "
                          "use the same model settings (--model/--arch), or a new output folder to start afresh")


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face Llama folders


def to_hf_llama_config(config: GPTConfig) -> dict[str, Any]:
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
        "attention_bias": config.attention_bias,
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


def from_hf_llama_config(d: dict[str, Any]) -> GPTConfig:
    """GPTConfig from an HF Llama config.json dict; PlinthError for Llama variants GPT cannot represent."""
    if d.get("model_type", "llama") != "llama":
        raise PlinthError(f"model_type {d['model_type']!r} is not supported; only 'llama' is")
    if d.get("hidden_act", "silu") != "silu":
        raise PlinthError(f"hidden_act {d['hidden_act']!r} is not supported; only 'silu' is")
    if d.get("mlp_bias"):
        raise PlinthError("mlp_bias is not supported: GPT's MLP has no biases")
    try:
        n_head = int(d["num_attention_heads"])
        return GPTConfig(
            name="hf-llama",
            vocab_size=int(d["vocab_size"]),
            n_layer=int(d["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=int(d.get("num_key_value_heads") or n_head),
            d_model=int(d["hidden_size"]),
            head_dim=int(d.get("head_dim") or 0),
            d_ff=int(d["intermediate_size"]),
            seq_len=int(d.get("max_position_embeddings", 2048)),
            rope_theta=_hf_rope_theta(d),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),  # LlamaConfig's default, not GPTConfig's
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
        )
    except KeyError as e:
        raise PlinthError(f"HF config lacks the field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise PlinthError(f"HF config: {e}") from e


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`."""
    single, index = directory / MODEL_WEIGHTS, directory / HF_INDEX_FILE
    if single.is_file():
        tensors = read_safetensors(single)
    elif index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise PlinthError(f"{index}: no 'weight_map' object")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(directory / shard))
    else:
        raise PlinthError(f"{directory}: neither {MODEL_WEIGHTS} nor {HF_INDEX_FILE} found "
                          f"(only safetensors checkpoints are read, never pickled .bin files)")
    # Old checkpoints stored the RoPE inverse frequencies; they are recomputed from the config.
    return {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}


def load_hf_llama(directory: str | os.PathLike, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> GPT:
    """A GPT from a local HF Llama folder (config.json + safetensors weights); fp32 unless `dtype` is given."""
    directory = Path(directory)
    config_path = directory / MODEL_CONFIG
    try:
        config = from_hf_llama_config(read_json(config_path, "HF config"))
    except PlinthError as e:
        msg = str(e)
        raise PlinthError(msg if msg.startswith(str(config_path)) else f"{config_path}: {msg}") from e
    model = build_empty(config, device, dtype)
    tensors = _read_hf_weights(directory)
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # one matrix serves both; HF folders may still store the copy
    load_state(model, tensors, str(directory))
    return model


def save_hf_llama(model: GPT, directory: str | os.PathLike, extra_config: dict[str, Any] | None = None) -> None:
    """Write a folder `transformers.LlamaForCausalLM.from_pretrained` loads; `extra_config` adds e.g. eos_token_id."""
    model = _unwrap(model)
    directory = Path(directory)
    data = safetensors.torch.save(weights_to_save(model), metadata={"format": "pt"})
    atomic_write_bytes(directory / MODEL_WEIGHTS, data)
    cfg = to_hf_llama_config(model.config)
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": dtype, **cfg,
          "rope_theta": cfg["rope_parameters"]["rope_theta"],  # for transformers < 4.56 readers
          **(extra_config or {})}
    atomic_write_json(directory / MODEL_CONFIG, hf)
