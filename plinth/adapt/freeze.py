"""Freezing before a run: which parameters train. Composition, not subclasses: `freeze(model, spec)` sets
`requires_grad` in place and returns the names that still train.

Specs (the `--freeze` option):
- `none`: everything trains (full fine-tuning);
- `all-but-head`: only the head trains (a frozen backbone + a trained head; "linear probing" with a bias);
- `first:K`: the embeddings and the first K blocks are frozen, the rest trains (`first:0`: the embeddings only);
- `PATTERN[,PATTERN...]`: parameters whose names match any glob (`backbone.layers.0.*`, `*norm*`) are frozen.
A pattern that matches nothing, or K beyond the model's blocks, is a one-line PlinthError naming what there is.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from plinth.common import PlinthError

HEAD = "score."  # the head's parameter prefix in a text classifier


def _layout(model: nn.Module) -> tuple[list[str], list[str]]:
    if not hasattr(model, "layer_prefixes"):
        raise PlinthError(f"{type(model).__name__} does not list its blocks; freeze it by name patterns instead")
    return model.layer_prefixes()


def frozen_names(model: nn.Module, spec: str, head: str = HEAD) -> set[str]:
    """The parameter names `spec` freezes (see the module doc); PlinthError for a spec that cannot apply."""
    names = [n for n, _ in model.named_parameters()]
    spec = spec.strip()
    if spec in ("", "none"):
        return set()
    if spec == "all-but-head":
        return {n for n in names if not n.startswith(head)}
    if spec.startswith("first:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise PlinthError(f"--freeze {spec}: K must be a whole number (first:2)") from None
        embeddings, blocks = _layout(model)
        if not 0 <= k <= len(blocks):
            raise PlinthError(f"--freeze {spec}: this model has {len(blocks)} blocks (use first:0 .. "
                              f"first:{len(blocks)})")
        prefixes = tuple(embeddings + blocks[:k])
        return {n for n in names if n.startswith(prefixes)}
    frozen: set[str] = set()
    for pattern in (p.strip() for p in spec.split(",")):
        hit = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not pattern or not hit:
            examples = ", ".join(names[:2] + names[-2:])
            raise PlinthError(f"--freeze pattern {pattern!r} matches no parameter (names look like: {examples}); "
                              "or use none, all-but-head, first:K")
        frozen |= hit
    return frozen


def freeze(model: nn.Module, spec: str, head: str = HEAD) -> list[str]:
    """Freeze what `spec` names (in place) and return the names of the parameters that still train."""
    frozen = frozen_names(model, spec, head)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return [n for n, p in model.named_parameters() if p.requires_grad]
