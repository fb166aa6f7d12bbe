"""Self-describing, atomically written checkpoints with a sha256 manifest, rotation and `--resume auto`.

A checkpoint folder `checkpoints/step_00000100/` holds:
  model.safetensors, config.json   weights and what rebuilds the model (plinth.models.io)
  tokenizer.json                   the tokenizer the model was trained with
  trainer_state.pt                 optimizer state and RNG states (tensors only; loaded with weights_only=True)
  run.json                         step, tokens seen, data position, the run's config
  manifest.json                    sha256 and size of every file above; written last, so its presence marks completion
The folder is assembled under a temp name and renamed into place, so a kill mid-write leaves the previous one intact.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.common import PlinthError, atomic_dir, atomic_write_json, list_checkpoints, verify_manifest, write_manifest
from plinth.models.io import load_model, save_model

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches, as tensors and plain values (safe for weights_only loading)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    py = ast.literal_eval(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    run_state: dict[str, Any], tokenizer_path: str | os.PathLike, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically under `run_dir/checkpoints`, then delete all but the newest `keep`."""
    final = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    with atomic_dir(final) as tmp:
        save_model(model, tmp)
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / "trainer_state.pt")
        atomic_write_json(tmp / "run.json", {"format_version": FORMAT_VERSION, "step": step, **run_state})
        write_manifest(tmp, step=step)
    for old in list_checkpoints(run_dir)[: -max(keep, 2)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_valid_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint that passes verification (a corrupt newest one falls back to the one before)."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_manifest(ckpt)
            return ckpt
        except PlinthError as e:
            print(f"warning: skipping damaged checkpoint: {e}", file=sys.stderr)
    return None


def restore_checkpoint(ckpt: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                       expect_model_config: dict | None = None, verified: bool = False) -> dict[str, Any]:
    """Verify a checkpoint (unless `verified`), load its weights into `model` (and optimizer + RNG); return run.json."""
    ckpt = Path(ckpt)
    if not verified:
        verify_manifest(ckpt)
    run_state = json.loads((ckpt / "run.json").read_text(encoding="utf-8"))
    if expect_model_config is not None and run_state.get("model_config") != expect_model_config:
        raise PlinthError(f"{ckpt}: was trained with a different model config; use the same --model/--arch "
                          "settings, or a new --train.out_dir to start afresh")
    saved = load_model(ckpt, device="cpu")
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise PlinthError(f"{ckpt}: weights do not fit this model ({first})") from None
    if optimizer is not None:
        device = next(model.parameters()).device
        state = torch.load(ckpt / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    return run_state
