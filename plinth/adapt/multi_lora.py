"""Many LoRA adapters on one base model, chosen per batch row: what lets one server answer requests for several
fine-tunes of the same base in the same decode step.

Each adapted `nn.Linear` is replaced by a `MultiLoraLinear` holding every adapter's low-rank pair stacked along a
leading adapter axis (row 0 is the base model: zeros). Before a forward pass the caller says which adapter each batch
row uses (`AdapterSet.select`); the layer then adds, per row b, `x_b @ A[i_b]^T @ B[i_b]^T` to the base output: the
batched form of LoRA's update (Hu et al. 2021, eq. 3; the gather-then-bmm scheme is S-LoRA's / Punica's,
Sheng et al. 2023, Chen et al. 2023). Adapters of different ranks are zero-padded to the largest, which adds exact
zeros. `alpha / r` is folded into B when loading.

A batch whose rows all use the base runs the plain Linear (no extra work); one whose rows all use the same adapter
runs two small matmuls instead of the gather.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from plinth.adapt.lora import read_adapter
from plinth.common import PlinthError


class AdapterSet:
    """The adapters attached to one model, by name (index 0, `None`, is the base), and the current row selection."""

    def __init__(self, names: list[str]) -> None:
        self.names = names  # adapter i + 1 is names[i]; 0 is the base
        self.rows: torch.Tensor | None = None  # (B,) adapter index per batch row; None: every row uses the base
        self.same: int = 0  # when every row uses one adapter: its index (then `rows` is None)

    def select(self, indices: list[int]) -> None:
        """Use adapter `indices[b]` (0: none) for batch row b in the next forward passes."""
        first = indices[0] if indices else 0
        if all(i == first for i in indices):
            self.rows, self.same = None, first
        else:
            self.rows, self.same = torch.tensor(indices), 0


class MultiLoraLinear(nn.Module):
    """A Linear layer plus per-row LoRA updates. `lora_A`: (n_adapters + 1, r_max, in_features); `lora_B`:
    (n_adapters + 1, out_features, r_max), already scaled by alpha / r; index 0 holds zeros (the base)."""

    def __init__(self, base: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, adapters: AdapterSet) -> None:
        super().__init__()
        self.base_layer = base
        self.register_buffer("lora_A", lora_A, persistent=False)
        self.register_buffer("lora_B", lora_B, persistent=False)
        self.adapters = adapters

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in_features) -> (B, T, out_features)
        y = self.base_layer(x)
        sel = self.adapters
        if sel.rows is None:
            if sel.same == 0:
                return y
            return y + (x @ self.lora_A[sel.same].T) @ self.lora_B[sel.same].T
        rows = sel.rows.to(x.device)
        if rows.shape[0] != x.shape[0]:
            raise RuntimeError(f"adapter selection has {rows.shape[0]} rows, the batch {x.shape[0]}")
        a = self.lora_A[rows]  # (B, r, in)
        b = self.lora_B[rows]  # (B, out, r)
        return y + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))


def attach_adapters(model: nn.Module, adapters: dict[str, str | os.PathLike], check_base: bool = True
                    ) -> AdapterSet:
    """Load each named adapter folder (peft LoRA format, trained on `model`) and wrap the layers any of them adapts,
    in place. Returns the `AdapterSet` whose `select` chooses the adapter of each batch row (default: the base).

    Raises PlinthError (naming the folder) when a folder is not an adapter of this base, and for a duplicate or
    empty name.
    """
    if any(not n for n in adapters):
        raise PlinthError("an adapter needs a name (NAME=DIR)")
    loaded = {name: read_adapter(model, Path(folder), check_base) for name, folder in adapters.items()}
    names = list(adapters)
    aset = AdapterSet(names)
    layers = sorted({layer for _, pairs in loaded.values() for layer in pairs})
    r_max = max(opts.rank for opts, _ in loaded.values())
    for layer in layers:
        linear = model.get_submodule(layer)
        if not isinstance(linear, nn.Linear):
            raise PlinthError(f"{layer}: not a Linear layer; cannot attach adapters to it")
        w = linear.weight
        lora_A = torch.zeros(len(names) + 1, r_max, linear.in_features, dtype=w.dtype, device=w.device)
        lora_B = torch.zeros(len(names) + 1, linear.out_features, r_max, dtype=w.dtype, device=w.device)
        for i, name in enumerate(names, start=1):
            opts, pairs = loaded[name]
            if layer in pairs:
                a, b = pairs[layer]
                lora_A[i, :opts.rank] = a
                lora_B[i, :, :opts.rank] = b * (opts.alpha / opts.rank)
        parent, _, child = layer.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                MultiLoraLinear(linear, lora_A, lora_B, aset))
    return aset
