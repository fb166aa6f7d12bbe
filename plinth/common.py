"""Shared low-level helpers: errors, atomic file writes, hashing, seeding, device and precision choice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class PlinthError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2, no traceback."""


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry itself is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as pretty JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success fsync its files and rename it to `final`.

    If the block raises, the temp directory is removed and `final` is untouched.
    An existing `final` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """Resolve 'auto' to cuda when available, else cpu; pass other names through."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise PlinthError(f"unknown device {name!r}: use auto, cpu or cuda") from e


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix units (AMX or AVX512-BF16), where bf16 autocast pays off."""
    cap = torch.backends.cpu.get_cpu_capability()
    if "AMX" in cap.upper():
        return True
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
        return " amx_bf16" in flags or " avx512_bf16" in flags
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn 'auto' into 'bf16' where the hardware runs it natively, else 'fp32'."""
    if precision not in ("auto", "fp32", "bf16"):
        raise PlinthError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for bf16, or a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def human_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint folders. Verification and lookup live here, low in the stack, so that anything that loads a model
# (evaluate, serve, audit) can check a checkpoint without importing the training package.

MANIFEST = "manifest.json"


def write_manifest(folder: str | os.PathLike, **extra: Any) -> dict:
    """Write `folder/manifest.json` listing sha256 and size of every file in it; written last = completion marker."""
    folder = Path(folder)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": 1, **extra, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: str | os.PathLike) -> dict:
    """Check every file against the manifest; raise PlinthError naming the first file that is missing or altered."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PlinthError(f"{folder}: no {MANIFEST}; not a complete Plinth checkpoint (was it interrupted mid-write?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        items = [(name, meta["sha256"], meta["bytes"]) for name, meta in files.items()]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise PlinthError(f"{manifest_path}: unreadable manifest; the checkpoint is damaged") from None
    for name, digest, size in items:
        path = folder / name
        if not path.is_file():
            raise PlinthError(f"{path}: missing from checkpoint (listed in {MANIFEST})")
        if path.stat().st_size != size or sha256_file(path) != digest:
            raise PlinthError(f"{path}: sha256 does not match {MANIFEST}; the file is corrupt or was modified")
    return manifest


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoint folders of a run (those with a manifest), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / MANIFEST).is_file()]
    return sorted(done, key=lambda p: p.name)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the newest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise PlinthError(f"{path}: no such run or checkpoint folder")
    found = list_checkpoints(path)
    if not found:
        raise PlinthError(f"{path}: no complete checkpoint inside (expected {path}/checkpoints/step_*/{MANIFEST})")
    return found[-1]
