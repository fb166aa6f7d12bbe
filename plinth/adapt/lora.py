"""LoRA through `peft`, on Plinth's own `nn.Module`s: apply, save the adapter alone, load it onto its base, merge.

Plinth's decoder names its layers as Hugging Face Llama does (`q_proj` ... `down_proj`), so peft's `target_modules`
read as users expect and an adapter file has the same tensor names peft writes for a `LlamaForCausalLM`: an adapter
trained here loads onto the exported HF model with `peft.PeftModel.from_pretrained`, and one trained there loads here.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (peft's format) and `plinth_adapter.json`
(the base model's config and a fingerprint of its weights, so an adapter is never applied to another base).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plinth.artifacts import read_json, write_manifest
from plinth.common import PlinthError, atomic_dir, atomic_write_json
from plinth.config import LoraOptions, validate

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_INFO = "plinth_adapter.json"
_PREFIX = "base_model.model."  # peft's key prefix in adapter files (the PeftModel wrapper around the base model)


def _peft():
    try:
        import peft
    except ImportError:
        raise PlinthError("LoRA needs the peft package: pip install 'plinth[adapt]' (scripts/setup.sh installs it)") \
            from None
    return peft


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's Linear layers (what `targets` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the model's config and the first 4096 values of every weight, rounded to bf16.

    Identifies a base model across storage precisions (an f32 and a bf16 copy of the same weights agree) while any
    training of the base changes it. LoRA layers are ignored, so it is the same before and after `apply_lora`.
    """
    h = hashlib.sha256(json.dumps(_config_dict(model), sort_keys=True).encode())
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.replace(".base_layer", "").encode())
        h.update(p.detach().flatten()[:4096].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _config_dict(model: nn.Module) -> dict[str, Any]:
    from plinth.models.registry import config_to_dict

    return {k: v for k, v in config_to_dict(model.config).items() if k != "name"}


def apply_lora(model: nn.Module, opts: LoraOptions) -> nn.Module:
    """Wrap the Linear layers named in `opts.targets` with LoRA (in place; returns `model`): the base weights are
    frozen, only the low-rank A/B matrices train; B starts at zero, so the model's output is unchanged at first.

    Raises PlinthError when peft is missing or a target names no layer (listing the layer names there are).
    """
    validate(opts, "lora")
    peft = _peft()
    names = linear_names(model)
    missing = [t for t in opts.targets if t not in names]
    if missing:
        raise PlinthError(f"lora targets {', '.join(missing)} match no layer; this model's linear layers are: "
                          f"{', '.join(names)}")
    config = peft.LoraConfig(r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                             target_modules=list(opts.targets), bias="none")
    peft.inject_adapter_in_model(config, model, adapter_name="default")
    for layer in model.modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            for key, drop in layer.lora_dropout.items():
                if isinstance(drop, nn.Dropout) and drop.p > 0:
                    layer.lora_dropout[key] = Dropout(drop.p)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


class _KeepScale(torch.autograd.Function):
    """x * keep / (1 - p), saving only the boolean mask (1 byte per element) for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


class Dropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on the CPU, for the dropout peft puts before every LoRA branch.

    torch draws one Mersenne-Twister number per element (`bernoulli_`): for LoRA on all seven projections of
    SmolLM2 that was 18% of a CPU training step (`benchmarks/sft_lora_step.py`). Here 16 random bits per element come
    from numpy's SFC64 generator (Dolan 2019, "Small Fast Chaotic"), seeded by one draw from torch's generator, so
    `torch.manual_seed` and a checkpoint's saved RNG state still decide every mask (exact resume holds). An element is
    kept when its 16 bits are at least round(p * 65536): p is applied to within 1/65536 (0.05 -> 0.0500031).
    Elsewhere (GPU, eval mode, p = 0) it is `nn.Dropout`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or not x.is_floating_point():
            return super().forward(x)
        n = x.numel()
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        bits = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]  # uniform over int16
        keep = torch.from_numpy(bits).view(x.shape) >= round(self.p * 65536) - 32768
        return _KeepScale.apply(x, keep, 1.0 / (1.0 - self.p))


def has_lora(model: nn.Module) -> bool:
    """Whether `model` carries LoRA layers."""
    return any("lora_" in name for name, _ in model.named_parameters())


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's file names (`base_model.model.<layer>.lora_A.weight`)."""
    out = {}
    for name, p in model.state_dict().items():
        if "lora_" in name:
            out[_PREFIX + name.replace(".default", "")] = p.detach().to("cpu", torch.float32).contiguous()
    return out


def write_adapter_config(folder: Path, opts: LoraOptions, base: str) -> None:
    """peft's adapter_config.json for `opts` (what `PeftModel.from_pretrained` reads), written atomically."""
    atomic_write_json(Path(folder) / ADAPTER_CONFIG, {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": opts.rank,
        "lora_alpha": opts.alpha, "lora_dropout": opts.dropout, "target_modules": sorted(opts.targets),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False})


def load_lora_checkpoint(folder: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """A model folder whose weights include LoRA layers (a LoRA run's checkpoint: base + adapter, with the adapter's
    adapter_config.json beside them), rebuilt with those layers, ready for inference."""
    from plinth.artifacts import MODEL_WEIGHTS
    from plinth.models.io import build_empty, load_state, read_model_config, read_safetensors

    folder = Path(folder)
    model = build_empty(read_model_config(folder), device)
    apply_lora(model, dataclasses.replace(read_adapter_options(folder, weights=False), dropout=0.0))
    load_state(model, read_safetensors(folder / MODEL_WEIGHTS), str(folder / MODEL_WEIGHTS))
    return model.requires_grad_(False).eval()


def save_adapter(model: nn.Module, folder: str | os.PathLike, opts: LoraOptions, base: str,
                 fingerprint: str, **info: Any) -> dict[str, Any]:
    """Write the adapter alone (peft format + Plinth's base check) as a folder, atomically; return its summary
    (path, bytes, adapter parameters)."""
    import safetensors.torch

    tensors = adapter_tensors(model)
    if not tensors:
        raise PlinthError("the model has no LoRA layers to save")
    folder = Path(folder)
    n = sum(t.numel() for t in tensors.values())
    with atomic_dir(folder) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_adapter_config(tmp, opts, str(base))
        atomic_write_json(tmp / ADAPTER_INFO, {
            "format_version": 1, "base": str(base), "base_fingerprint": fingerprint,
            "base_config": _config_dict(model), "rank": opts.rank, "alpha": opts.alpha, "dropout": opts.dropout,
            "targets": list(opts.targets), "adapter_parameters": n, **info})
        write_manifest(tmp)
    return {"adapter": str(folder), "adapter_bytes": (folder / ADAPTER_WEIGHTS).stat().st_size,
            "adapter_parameters": n}


def read_adapter_options(folder: str | os.PathLike, weights: bool = True) -> LoraOptions:
    """The LoRA settings an adapter folder was saved with; PlinthError when the folder is not an adapter."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or (weights and not (folder / ADAPTER_WEIGHTS).is_file()):
        raise PlinthError(f"{folder}: not a LoRA adapter folder (expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    cfg = read_json(folder / ADAPTER_CONFIG, "adapter config")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise PlinthError(f"{folder / ADAPTER_CONFIG}: a {cfg.get('peft_type')} adapter; only LoRA is supported")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        raise PlinthError(f"{folder / ADAPTER_CONFIG}: target_modules is a regex; list the layer names instead")
    try:
        opts = LoraOptions(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                           dropout=float(cfg.get("lora_dropout", 0.0)), targets=list(targets))
    except (KeyError, TypeError, ValueError):
        raise PlinthError(f"{folder / ADAPTER_CONFIG}: missing or bad r / lora_alpha / target_modules") from None
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise PlinthError(f"{folder / ADAPTER_CONFIG}: DoRA / rsLoRA adapters are not supported")
    validate(opts, str(folder / ADAPTER_CONFIG))
    return opts


def read_adapter(model: nn.Module, folder: str | os.PathLike, check_base: bool = True
                 ) -> tuple[LoraOptions, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The LoRA adapter saved in `folder`, checked against `model` (its base): its options and, per adapted layer
    (module path, e.g. `model.layers.0.self_attn.q_proj`), the pair (A (r, in_features), B (out_features, r)) in fp32
    on the CPU. The layer's update is `B @ A * alpha / r` (Hu et al. 2021, "LoRA", eq. 3).

    Raises PlinthError when the folder is not an adapter, was trained for another base model (config or weights
    fingerprint differ; `check_base=False` skips the weights check for adapters from elsewhere), or its tensors do
    not fit the model's layers.
    """
    import safetensors.torch

    folder = Path(folder)
    opts = read_adapter_options(folder)
    if (folder / ADAPTER_INFO).is_file():
        info = read_json(folder / ADAPTER_INFO, "adapter info")
        mine = _config_dict(model)
        theirs = info.get("base_config", {})
        diff = [f"{k} {theirs[k]} vs {mine[k]}" for k in mine if k in theirs and theirs[k] != mine[k]]
        if diff:
            raise PlinthError(f"{folder}: this adapter was trained for another base model ({info.get('base')}; "
                              f"{', '.join(diff[:3])})")
        if check_base and info.get("base_fingerprint") not in (None, base_fingerprint(model)):
            raise PlinthError(f"{folder}: this adapter was trained on other base weights ({info.get('base')}); "
                              "load it with the model it was trained from")
    try:
        tensors = safetensors.torch.load_file(str(folder / ADAPTER_WEIGHTS), device="cpu")
    except Exception as e:
        raise PlinthError(f"{folder / ADAPTER_WEIGHTS}: cannot read safetensors weights ({e})") from None
    modules = dict(model.named_modules())
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    bad = []
    for key in tensors:
        name = key.removeprefix(_PREFIX)
        for part in (".lora_A.weight", ".lora_B.weight"):
            if name.endswith(part):
                layer = name.removesuffix(part).replace(".base_layer", "")
                break
        else:
            bad.append(key)
            continue
        if layer in pairs:
            continue
        a, b = tensors.get(_PREFIX + layer + ".lora_A.weight"), tensors.get(_PREFIX + layer + ".lora_B.weight")
        linear = modules.get(layer)
        linear = getattr(linear, "base_layer", linear)
        if (a is None or b is None or not isinstance(linear, nn.Linear) or a.shape != (opts.rank, linear.in_features)
                or b.shape != (linear.out_features, opts.rank)):
            bad.append(key)
            continue
        pairs[layer] = (a.float(), b.float())
    if bad or not pairs:
        raise PlinthError(f"{folder / ADAPTER_WEIGHTS}: adapter tensors do not fit this model ({len(bad)} names or "
                          f"shapes differ{', e.g. ' + bad[0] if bad else ''})")
    return opts, pairs


def load_adapter(model: nn.Module, folder: str | os.PathLike, check_base: bool = True) -> nn.Module:
    """Apply the LoRA adapter saved in `folder` to `model` (its base) in place, through peft; returns `model`.

    Raises PlinthError as `read_adapter` does.
    """
    opts, pairs = read_adapter(model, folder, check_base)
    apply_lora(model, LoraOptions(rank=opts.rank, alpha=opts.alpha, dropout=0.0, targets=opts.targets))
    state = model.state_dict()
    expected = {k for k in state if "lora_" in k}
    got = {}
    for layer, (a, b) in pairs.items():
        got[layer + ".lora_A.default.weight"], got[layer + ".lora_B.default.weight"] = a, b
    bad = sorted(expected ^ set(got))
    if bad:
        raise PlinthError(f"{Path(folder) / ADAPTER_WEIGHTS}: adapter tensors do not fit this model ({len(bad)} "
                          f"names differ, e.g. {bad[0]})")
    with torch.no_grad():
        for k, v in got.items():
            state[k].copy_(v)
    model.requires_grad_(False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight (W + B A * alpha/r) and put plain Linear layers back, in place."""
    peft = _peft()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    if not layers:
        raise PlinthError("the model has no LoRA layers to merge")
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    model.requires_grad_(True)
    return model
