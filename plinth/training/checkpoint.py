"""Training checkpoints: the model folder plus optimizer, RNG and data position, written and restored exactly.

The folder format (file names, manifest, atomic commit, rotation, verification) belongs to `plinth.artifacts`; this
module decides what a training run puts in it and how it comes back: weights loaded into the live model in place,
optimizer state and every RNG restored, so a resumed run continues bit for bit. A multi-process run writes its
model and optimizer as `torch.distributed.checkpoint` shards instead of `trainer_state.pt` (`save_sharded`), and
any number of processes resumes from either kind (`restore_sharded`, `restore_full_into`).
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

from plinth.artifacts import (
    FORMAT_VERSION,
    MODEL_WEIGHTS,
    RNG_STATE,
    RUN_STATE,
    SHARDED_METADATA,
    TRAINER_STATE,
    checkpoint_dir,
    checkpoint_write_error,
    read_run_state,
    read_trainer_state,
    rotate_checkpoints,
    write_manifest,
)
from plinth.artifacts import write_checkpoint as write_checkpoint_folder
from plinth.common import PlinthError, atomic_dir, atomic_write_json
from plinth.models.io import check_same_config, load_weights, read_safetensors, save_model, save_weights, tied_keys


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


# ----------------------------------------------------------------------------------------------------------------------
# Sharded checkpoints (multi-process runs): torch.distributed.checkpoint, under the same folder rules


def is_sharded(ckpt: str | os.PathLike) -> bool:
    """True for a checkpoint written by a multi-process run (model and optimizer in DCP shards)."""
    return (Path(ckpt) / SHARDED_METADATA).is_file()


def save_sharded(par: Any, run_dir: str | os.PathLike, step: int, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, run_state: dict[str, Any], assets: dict[str, str | os.PathLike],
                 keep: int = 2) -> None:
    """Write checkpoint `step` of a multi-process run; every rank calls it (`par` is its `Distributed`).

    Rank 0 makes the temporary folder and tells the others; all ranks write their shards of model and optimizer into
    it with `torch.distributed.checkpoint` (replicated DDP tensors are written once); rank 0 adds the consolidated
    `model.safetensors` + `config.json` (so `plinth.load`, evaluate and generate read it like any checkpoint), the
    assets, every rank's RNG state and run.json, then the manifest (sha256 of every file, shards included) last, and
    renames the folder into place. A failure on any rank raises the same one-line PlinthError on every rank; the
    previous checkpoints stay valid.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # this rank's shards (DTensors under FSDP)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # rank 0
    rngs = par.gather(rng_state())
    final = checkpoint_dir(run_dir, step)
    if not par.is_main:
        kind, tmp = par.broadcast(None)
        if kind == "error":
            raise PlinthError(tmp)
        _dcp_save(dcp, {"model": model_sd, "optim": optim_sd}, tmp, final)
        kind, message = par.broadcast(None)
        if kind == "error":
            raise PlinthError(message)
        return
    told = False
    try:
        with atomic_dir(final) as tmp:
            par.broadcast(("ok", str(tmp)))
            told = True
            _dcp_save(dcp, {"model": model_sd, "optim": optim_sd}, str(tmp), final)
            skip = tied_keys(model)
            save_weights({k: v for k, v in full.items() if k not in skip}, model.config, tmp)
            for name, path in assets.items():
                shutil.copyfile(path, tmp / name)
            torch.save({"ranks": rngs}, tmp / RNG_STATE)
            atomic_write_json(tmp / RUN_STATE, {"format_version": FORMAT_VERSION, **run_state, "step": step})
            write_manifest(tmp, step=step)
    except (OSError, RuntimeError) as e:
        error = checkpoint_write_error(final, e)
        par.broadcast(("error", str(error)))  # to the others, waiting for the folder or for the outcome
        raise error from None
    except PlinthError as e:
        if not told:
            par.broadcast(("error", str(e)))
        raise
    par.broadcast(("ok", None))
    rotate_checkpoints(run_dir, keep)


def _dcp_save(dcp: Any, state: dict[str, Any], folder: str, final: Path) -> None:
    from torch.distributed.checkpoint import CheckpointException

    try:
        dcp.save(state, checkpoint_id=folder)
    except CheckpointException as e:  # raised on every rank when any rank failed to write
        raise PlinthError(f"{final}: could not write the sharded checkpoint ({_first_line(e)}); the previous "
                          "checkpoint is intact; free space or fix permissions, then rerun to resume") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def restore_sharded(ckpt: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rank: int = 0) -> dict[str, Any]:
    """Load a sharded checkpoint into the live model and optimizer, on any number of processes (one included).

    torch.distributed.checkpoint reshards: each rank reads the parts of every saved shard that its own (possibly
    differently sharded, or unsharded) tensors cover. RNG states come back per rank (rank 0's where this run has
    more ranks than the one saved). One-line PlinthError naming the checkpoint when it does not fit the model.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ckpt = Path(ckpt)
    run_state = read_run_state(ckpt)
    check_same_config(model, ckpt)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(ckpt))
    except (CheckpointException, RuntimeError, ValueError, KeyError) as e:
        raise PlinthError(f"{ckpt}: the sharded checkpoint does not fit this model and optimizer "
                          f"({_first_line(e)}); the checkpoint is damaged or from another run") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rngs = _read_rngs(ckpt / RNG_STATE)
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0], str(ckpt / RNG_STATE))
    return run_state


def _read_rngs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PlinthError(f"{path}: RNG state not found; the checkpoint is damaged")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return list(saved["ranks"])
    except Exception as e:  # unpickling refused, truncated file, wrong layout: all mean a damaged file
        raise PlinthError(f"{path}: not a readable RNG state ({type(e).__name__}); the file is damaged") from None


def restore_full_into(ckpt: str | os.PathLike, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a single-process checkpoint into a replicated or sharded model and its optimizer (resume 1 -> W).

    Every rank reads the full weights and optimizer state; `set_state_dict(full_state_dict=True)` keeps the part
    each rank owns. The saved optimizer state is keyed by parameter index; indices follow the optimizer's parameter
    order, which is the model's (see `optim.make_adamw`), so they map to parameter names.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    ckpt = Path(ckpt)
    run_state = read_run_state(ckpt)
    check_same_config(model, ckpt)
    tensors = read_safetensors(ckpt / MODEL_WEIGHTS)
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight under its first name
    keys = dict(model.state_dict(keep_vars=True))
    for alias in tied_keys(model):  # stored once; the state dict API expects every name
        source = next(k for k, v in keys.items() if v is keys[alias] and k != alias)
        tensors[alias] = tensors[source]
    state = read_trainer_state(ckpt / TRAINER_STATE)
    saved = state["optimizer"]
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    try:
        optim_sd = {"state": {order[int(i)]: s for i, s in saved["state"].items()},
                    "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                                     for g in saved["param_groups"]]}
        set_state_dict(model, optimizer, model_state_dict=tensors, optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True))
    except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise PlinthError(f"{ckpt / TRAINER_STATE}: optimizer state does not fit this model ({_first_line(e)}); the "
                          "file is damaged or from another run") from None
    set_rng_state(state["rng"], str(ckpt / TRAINER_STATE))
    return run_state
