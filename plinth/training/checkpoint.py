"""Training checkpoints: the model folder plus optimizer, RNG and data position, written and restored exactly.

The folder format (file names, manifest, atomic commit, rotation, verification) belongs to `plinth.artifacts`; this
module decides what a training run puts in it and how it comes back: weights loaded into the live model in place,
optimizer state and every RNG restored, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import ast
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.artifacts import FORMAT_VERSION, RUN_STATE, TRAINER_STATE, read_run_state, read_trainer_state
from plinth.artifacts import write_checkpoint as write_checkpoint_folder
from plinth.common import PlinthError, atomic_write_json
from plinth.models.io import load_weights, save_model


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches, as tensors and plain values (safe for weights_only loading)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], source: str = "trainer state") -> None:
    """Restore what rng_state() captured; PlinthError naming `source` if the entries are malformed."""
    try:
        torch.set_rng_state(state["torch"])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
        py = ast.literal_eval(state["python"])
        random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, SyntaxError, AttributeError) as e:
        raise PlinthError(f"{source}: damaged RNG state ({type(e).__name__}); the file is damaged") from None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    run_state: dict[str, Any], assets: dict[str, str | os.PathLike], keep: int = 2) -> Path:
    """Write checkpoint `step` (model, `assets` copied under their names, trainer state, run.json) atomically.

    Raises PlinthError naming the checkpoint when the disk is full or not writable; earlier checkpoints stay valid.
    """

    def fill(tmp: Path) -> None:
        save_model(model, tmp)
        for name, path in assets.items():
            shutil.copyfile(path, tmp / name)
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / TRAINER_STATE)
        atomic_write_json(tmp / RUN_STATE, {"format_version": FORMAT_VERSION, **run_state, "step": step})

    return write_checkpoint_folder(run_dir, step, fill, keep)


def restore_checkpoint(ckpt: str | os.PathLike, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load a (verified) checkpoint into the live `model` in place, and the optimizer and RNG states; return run.json.

    Every file read fails with one line naming it: a damaged run.json, config.json or trainer_state.pt, or weights
    that do not fit the model being trained.
    """
    ckpt = Path(ckpt)
    run_state = read_run_state(ckpt)
    load_weights(model, ckpt)
    if optimizer is not None:
        device = next(model.parameters()).device
        state = read_trainer_state(ckpt / TRAINER_STATE, device)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise PlinthError(f"{ckpt / TRAINER_STATE}: optimizer state does not fit this model "
                              f"({str(e).splitlines()[0][:120]}); the file is damaged or from another run") from None
        set_rng_state(state["rng"], str(ckpt / TRAINER_STATE))
    return run_state
