"""Run and checkpoint folders: file names, manifests, format versions, locking, and "latest *verified* checkpoint".

One owner for these formats, so training, `plinth.load`, evaluate and generate agree on them: a damaged newest
checkpoint is skipped everywhere with a warning, and every read of a run file fails with one line naming the file.

A run folder:
    config.yaml      the resolved config; `plinth VERB --config config.yaml` reproduces the run
    metrics.jsonl    one JSON row per logged step;  tb/  TensorBoard events
    summary.json     status, steps, tokens, FLOPs, wall time, final validation metrics
    checkpoints/step_00000100/
        model.safetensors, config.json    the model (see plinth.models.io)
        tokenizer.json                    the tokenizer it was trained with (and any other asset)
        trainer_state.pt                  optimizer and RNG states: tensors only, loaded with weights_only=True
        run.json                          step, tokens, data position, the run's config
        manifest.json                     sha256 + size of every file; written last, so it marks completion
      a checkpoint of a multi-process run has, instead of trainer_state.pt:
        .metadata, __R_0.distcp           model and optimizer sharded by torch.distributed.checkpoint (any number of
                                          processes, one included, can resume from them)
        rng.pt                            every rank's RNG states (tensors and plain values)
    .lock            held (an OS file lock) by the process running in the folder

A model folder (written by `plinth import`, or any checkpoint): model.safetensors, config.json, tokenizer.json, and for
imported language models generation.json (special tokens, stop ids) and chat_template.jinja; manifest.json last.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from plinth.common import PlinthError, atomic_dir, atomic_write_json, sha256_file, warn

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation.json"  # a language model's special tokens and stop ids (imported models)
CHAT_TEMPLATE = "chat_template.jinja"  # a language model's chat template (imported models)
TRAINER_STATE = "trainer_state.pt"
RUN_STATE = "run.json"
RUN_CONFIG = "config.yaml"
SHARDED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint
RNG_STATE = "rng.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"

FORMAT_VERSION = 1  # of checkpoint folders (manifest.json) and run.json; a newer one is refused with a clear error


# ----------------------------------------------------------------------------------------------------------------------
# Reading files with one-line errors


def read_json(path: str | os.PathLike, what: str = "file", required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object from `path`; PlinthError naming the file if missing, not JSON, not an object or lacking a key."""
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: {what} not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlinthError(f"{path}: {what} is not valid JSON ({e}); the file is damaged") from None
    if not isinstance(obj, dict):
        raise PlinthError(f"{path}: {what} should be a JSON object, got {type(obj).__name__}; the file is damaged")
    missing = [k for k in required if k not in obj]
    if missing:
        raise PlinthError(f"{path}: {what} lacks {', '.join(map(repr, missing))}; the file is damaged or from another "
                          "tool")
    _check_version(obj, path)
    return obj


def _check_version(obj: dict, path: Path) -> None:
    version = obj.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise PlinthError(f"{path}: format_version {version!r} is not an integer; the file is damaged")
    if version > FORMAT_VERSION:
        raise PlinthError(f"{path}: format_version {version} is newer than this Plinth reads ({FORMAT_VERSION}); "
                          "upgrade plinth (pip install -U plinth)")


def read_trainer_state(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Optimizer and RNG state saved by training, loaded with `weights_only=True` (nothing is unpickled as code).

    PlinthError naming the file when it is missing, truncated, holds anything but tensors and plain values, or lacks
    the `optimizer`/`rng` entries.
    """
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: trainer state not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise PlinthError(f"{path}: not a readable trainer state (it holds objects other than tensors and plain "
                          "values, which are never loaded); the file is damaged or not Plinth's") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise PlinthError(f"{path}: not a readable trainer state (truncated or not a torch file: "
                          f"{type(e).__name__}); the file is damaged or not Plinth's") from None
    if not isinstance(state, dict) or not {"optimizer", "rng"} <= set(state):
        raise PlinthError(f"{path}: trainer state lacks 'optimizer'/'rng'; the file is damaged or not Plinth's")
    return state


# ----------------------------------------------------------------------------------------------------------------------
# Manifests


def write_manifest(folder: str | os.PathLike, **extra: Any) -> dict:
    """Write `folder/manifest.json` listing sha256 and size of every file in it; written last = completion marker."""
    folder = Path(folder)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": FORMAT_VERSION, **extra, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: str | os.PathLike) -> dict:
    """Check every file against the manifest; raise PlinthError naming the first file that is missing or altered."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PlinthError(f"{folder}: no {MANIFEST}; not a complete Plinth checkpoint (was it interrupted mid-write?)")
    manifest = read_json(manifest_path, "checkpoint manifest", required=("files",))
    try:
        items = [(name, meta["sha256"], meta["bytes"]) for name, meta in manifest["files"].items()]
    except (KeyError, TypeError, AttributeError):
        raise PlinthError(f"{manifest_path}: unreadable manifest; the checkpoint is damaged") from None
    for name, digest, size in items:
        path = folder / name
        if not path.is_file():
            raise PlinthError(f"{path}: missing from checkpoint (listed in {MANIFEST})")
        if path.stat().st_size != size or sha256_file(path) != digest:
            raise PlinthError(f"{path}: sha256 does not match {MANIFEST}; the file is corrupt or was modified")
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints of a run


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint `step` of a run lives."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoint folders of a run (those with a manifest), oldest first (not verified: see below)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / MANIFEST).is_file()]
    return sorted(done, key=lambda p: p.name)


def latest_verified_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint whose files match its manifest; a damaged newer one is skipped with a warning."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_manifest(ckpt)
            return ckpt
        except PlinthError as e:
            warn(f"skipping damaged checkpoint: {e}")
    return None


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder with a model's config.json and weights (an exported or imported model; no training state)."""
    path = Path(path)
    return (path / MODEL_CONFIG).is_file() and (path / MODEL_WEIGHTS).is_file()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The folder to load a model from, verified: a checkpoint folder, a run's newest verified checkpoint, or a plain
    model folder (config.json + model.safetensors, checked against its manifest when it has one).

    Raises PlinthError when nothing loadable is there, naming what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise PlinthError(f"{path}: no such run, checkpoint or model folder")
    if (path / MANIFEST).is_file():
        verify_manifest(path)
        return path
    if (path / CHECKPOINTS).is_dir():
        found = latest_verified_checkpoint(path)
        if found is None:
            raise PlinthError(f"{path}: no complete, undamaged checkpoint inside ({path}/{CHECKPOINTS}/step_*/"
                              f"{MANIFEST})")
        return found
    if is_model_folder(path):
        return path
    raise PlinthError(f"{path}: not a run, checkpoint or model folder (expected {CHECKPOINTS}/, {MANIFEST}, or "
                      f"{MODEL_CONFIG} + {MODEL_WEIGHTS})")


def read_run_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's run.json (step, tokens, elapsed_s, data position, config), checked for the keys resume needs."""
    return read_json(Path(ckpt) / RUN_STATE, "run state", required=("step", "tokens", "elapsed_s", "data"))


def write_checkpoint(run_dir: str | os.PathLike, step: int, fill: Callable[[Path], None], keep: int = 2) -> Path:
    """Write checkpoint `step`: `fill(tmp)` writes its files into a temp folder, then the manifest goes in last, the
    folder is renamed into place and all but the newest `keep` (≥ 2) checkpoints are deleted.

    A failed write (disk full, permission) raises PlinthError naming the folder; the previous checkpoints stay valid.
    """
    final = checkpoint_dir(run_dir, step)
    try:
        with atomic_dir(final) as tmp:
            fill(tmp)
            write_manifest(tmp, step=step)
    except OSError as e:
        raise _write_error(final, e) from None
    except RuntimeError as e:  # torch.save reports a failed write as RuntimeError ("PytorchStreamWriter failed ...")
        if "writ" not in str(e).lower():
            raise
        raise _write_error(final, e) from None
    rotate_checkpoints(run_dir, keep)
    return final


def rotate_checkpoints(run_dir: str | os.PathLike, keep: int = 2) -> None:
    """Delete all but the newest `keep` (at least 2) completed checkpoints of a run."""
    for old in list_checkpoints(run_dir)[: -max(keep, 2)]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_write_error(final: Path, e: BaseException) -> PlinthError:
    """The one-line error for a checkpoint that could not be written (disk full, permissions), naming what is kept."""
    return _write_error(final, e)


def _write_error(final: Path, e: BaseException) -> PlinthError:
    previous = [p.name for p in list_checkpoints(final.parent.parent)]
    kept = f"the previous checkpoint ({previous[-1]}) is intact" if previous else "no earlier checkpoint exists"
    reason = "disk full" if getattr(e, "errno", None) == errno.ENOSPC else str(e).strip().splitlines()[0][:160]
    return PlinthError(f"{final}: could not write the checkpoint ({reason}); {kept}; free space or fix permissions, "
                       "then rerun the same command to resume")


# ----------------------------------------------------------------------------------------------------------------------
# Paths stored in run files: absolute, plus relative to the run folder, so a run works from any working directory and
# after being moved together with its data.


def stored_path(path: str | os.PathLike, run_dir: str | os.PathLike) -> dict[str, str]:
    """{'abs': absolute path, 'rel': path relative to the run folder} for a path a run depends on."""
    absolute = Path(path).expanduser().resolve()
    return {"abs": str(absolute), "rel": os.path.relpath(absolute, Path(run_dir).resolve())}


def resolve_stored_path(entry: Any, run_dir: str | os.PathLike) -> Path:
    """The first existing of a stored path's absolute and run-relative forms (the absolute one when neither exists).

    Accepts a plain string (older run files) as well as what `stored_path` wrote.
    """
    if isinstance(entry, str):
        entry = {"abs": entry}
    if not isinstance(entry, dict):
        raise PlinthError(f"{run_dir}: a stored path is damaged ({entry!r})")
    candidates = []
    if entry.get("abs"):
        candidates.append(Path(entry["abs"]))
    if entry.get("rel"):
        candidates.append(Path(run_dir).resolve() / entry["rel"])
    for c in candidates:
        if c.exists():
            return c
    return candidates[0] if candidates else Path(run_dir)


# ----------------------------------------------------------------------------------------------------------------------
# One process per run folder


class RunLock:
    """An exclusive OS lock on `run_dir/.lock`, held for the life of a run; released by the OS if the process dies.

    A second process refuses with one line naming the holder's pid (written into the lock file).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise PlinthError naming the process holding it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PlinthError(f"{self.path.parent}: another Plinth process (pid {holder}) is running in this folder; "
                              "wait for it to finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; its content is only informative)."""
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[RunLock]:
    """`with locked(run_dir):` hold the run folder's lock for the block."""
    with RunLock(run_dir) as lock:
        yield lock
