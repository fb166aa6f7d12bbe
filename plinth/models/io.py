"""Save and load model folders of any family, and Hugging Face llama/mistral/qwen2 folders.

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
from plinth.models.hf import gpt_config_from_hf, hf_config_from_gpt
from plinth.models.registry import config_from_dict, config_to_dict, family_of, on_meta

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
    model = on_meta(family_of(config).model_class, config)
    # `to_empty`, with `torch.empty` for `empty_like`: empty_like of a meta tensor runs torch's Python reference
    # implementation, which imports sympy (~0.5 s of every command that loads a model). Buffers with no stored
    # values (RoPE tables) recompute themselves in _apply.
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
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
# Hugging Face folders (llama, mistral, qwen2); the config translation is in hf.py


def to_hf_llama_config(config: GPTConfig) -> dict[str, Any]:
    """`transformers.LlamaConfig(**kwargs)` keyword arguments for the same architecture (no special ids)."""
    hf = hf_config_from_gpt(config)
    return {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "rope_scaling", "rope_theta")}


def from_hf_llama_config(d: dict[str, Any]) -> GPTConfig:
    """GPTConfig from an HF config dict (`model_type` llama when absent); PlinthError naming what GPT lacks."""
    return gpt_config_from_hf({"model_type": "llama", **d} if "model_type" not in d else d, name="hf-llama")


def read_hf_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`.

    Only safetensors are read (a folder with only pickled `.bin` weights is refused, never unpickled). PlinthError
    naming the file when the index is damaged, a shard is missing or a tensor is listed in no shard.
    """
    directory = Path(directory)
    single, index = directory / MODEL_WEIGHTS, directory / HF_INDEX_FILE
    if single.is_file():
        tensors = read_safetensors(single)
    elif index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise PlinthError(f"{index}: no 'weight_map' object of tensor name -> shard file; the index is damaged")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise PlinthError(f"{index}: shard name {shard!r} is not a file name in this folder")
            tensors.update(read_safetensors(directory / shard))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise PlinthError(f"{index}: lists {len(absent)} tensors no shard holds (first: {absent[0]})")
    else:
        bins = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" (found {bins[0]}: pickled weights are never loaded; re-save with safetensors)" if bins else ""
        raise PlinthError(f"{directory}: neither {MODEL_WEIGHTS} nor {HF_INDEX_FILE} found{hint}")
    # Old checkpoints stored the RoPE inverse frequencies; they are recomputed from the config.
    return {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}


def read_hf_config(directory: str | os.PathLike) -> tuple[GPTConfig, dict[str, Any]]:
    """(GPTConfig, the raw config.json mapping) of an HF folder; PlinthError prefixed with the file's path."""
    path = Path(directory) / MODEL_CONFIG
    raw = read_json(path, "HF config")
    try:
        return gpt_config_from_hf(raw, name=str(raw.get("_name_or_path") or Path(directory).name or "hf")), raw
    except PlinthError as e:
        raise PlinthError(f"{path}: {e}") from None


def load_hf(directory: str | os.PathLike, device: torch.device | str = "cpu",
            dtype: torch.dtype | None = None) -> GPT:
    """A GPT from a local HF llama/mistral/qwen2 folder (config.json + safetensors, sharded or not); fp32 unless
    `dtype` is given. Every tensor must be there with the config's shape (one-line PlinthError otherwise)."""
    directory = Path(directory)
    config, _ = read_hf_config(directory)
    model = build_empty(config, device, dtype)
    tensors = read_hf_weights(directory)
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # one matrix serves both; HF folders may still store the copy
    load_state(model, tensors, str(directory))
    return model


def save_hf(model: GPT, directory: str | os.PathLike, extra_config: dict[str, Any] | None = None,
            dtype: torch.dtype | None = None) -> None:
    """Write `model.safetensors` + `config.json` that `transformers.AutoModelForCausalLM.from_pretrained` loads (Llama,
    or Qwen2 for q/k/v-only biases); `extra_config` adds e.g. bos/eos ids; `dtype` casts the stored weights."""
    model = _unwrap(model)
    directory = Path(directory)
    tensors = weights_to_save(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    atomic_write_bytes(directory / MODEL_WEIGHTS, safetensors.torch.save(tensors, metadata={"format": "pt"}))
    stored = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    atomic_write_json(directory / MODEL_CONFIG, {**hf_config_from_gpt(model.config), "dtype": stored,
                                                  **(extra_config or {})})


load_hf_llama = load_hf  # the names of the first release
save_hf_llama = save_hf
