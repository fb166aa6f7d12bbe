"""Shared low-level helpers: errors and warnings, atomic file writes, hashing, seeding, device and precision choice,
and the one progress display every long step uses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from plinth.config import PlinthError

# torch is imported inside the functions that use it: the data pipeline's worker processes import this module and
# would otherwise pay ~2.5 s and ~200 MB each for nothing.
if TYPE_CHECKING:
    import torch

__all__ = ["PlinthError", "PlinthWarning", "warn"]


class PlinthWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one `warning:` line)."""


def warn(message: str) -> None:
    """Emit a PlinthWarning (one line on the CLI; catchable with the `warnings` module from Python)."""
    warnings.warn(message, PlinthWarning, stacklevel=2)


# ----------------------------------------------------------------------------------------------------------------------
# Files: atomic writes with the permissions the user's umask asks for


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-return, not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; give the file the mode a plain open()/mkdir() would.
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry itself is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically: temp file in the same folder, fsync, rename; the umask sets its mode.

    Raises OSError (e.g. disk full) with the temp file removed and any previous `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(Path(tmp), directory=False)
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


TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory `.NAME.XXXX.tmp` beside `final`; on success fsync its files and rename it to `final`.

    If the block raises, the temp directory is removed and `final` is untouched. An existing `final` is replaced only
    after the new one is complete. A kill leaves the temp folder behind; `remove_stale_temp` clears those.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    _chmod_default(tmp, directory=True)
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


def remove_stale_temp(folder: str | os.PathLike) -> int:
    """Delete temp folders/files that `atomic_dir`/`atomic_write_bytes` left in `folder` when killed; return how many.

    Only call this while holding the folder's lock: another live writer's temp files look the same.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name.startswith(".") and (p.name.endswith(TMP_SUFFIX) or p.name.endswith(".old")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed += 1
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Seeds, devices, precision


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """Resolve 'auto' to cuda when available, else cpu; check that an explicit device exists on this machine.

    Raises PlinthError for an unknown device name or one this torch build or machine does not have.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PlinthError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise PlinthError(f"device {name!r} is not available: this torch is {build} and sees no GPU; use "
                              "--device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PlinthError(f"device {name!r} is not available: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PlinthError(f"device {name!r} is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PlinthError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix units (AMX or AVX512-BF16), where bf16 autocast pays off."""
    import torch

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
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for bf16, or a no-op for fp32."""
    if precision == "bf16":
        import torch

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


def human_duration(seconds: float) -> str:
    """3725.2 -> '1:02:05'; negative or non-finite -> '?'."""
    if not (seconds >= 0 and seconds < float("inf")):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ----------------------------------------------------------------------------------------------------------------------
# Progress: a live bar on a terminal, plain periodic lines otherwise (CI logs, files, pipes)


class Progress:
    """Progress of one long task with rate and ETA.

    On a terminal it draws a `rich` bar; otherwise (output piped to a file or a CI log) it prints a plain line at most
    every `interval` seconds and a last one when the task ends, so a log shows the run as it goes and never ends on a
    stale ETA. `unit="B"` formats counts as bytes (MB, MB/s).

        with Progress("pretrain", total=600, unit="step") as bar:
            bar.update(completed=step, info="loss 3.21")
    """

    def __init__(self, description: str, total: float, unit: str = "step", enabled: bool = True,
                 interval: float = 15.0, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.description, self.total, self.unit, self.enabled = description, max(float(total), 0.0), unit, enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.completed = 0.0
        self.info = ""
        self._start = self._last_line = time.perf_counter()
        self._start_count = 0.0
        self._eta: float | None = None
        self._rich = None
        self._task = None

    def __enter__(self) -> Progress:
        self._start = self._last_line = time.perf_counter()
        if self.enabled and self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}")]
            self._rich = RichProgress(*columns, console=Console(file=self.stream), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, info="", eta="?")
        return self

    def start_at(self, completed: float) -> None:
        """Count the rate from `completed` (work done before this process, e.g. on resume, is not in the rate)."""
        self.completed = self._start_count = completed
        self._start = time.perf_counter()

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        done = self.completed - self._start_count
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def rate_eta(self) -> float:
        """Seconds left at the current rate; inf when unknown."""
        rate = self._rate()
        return (self.total - self.completed) / rate if rate > 0 else float("inf")

    def eta_seconds(self) -> float:
        """The ETA last given to `update`, else the rate's."""
        return self._eta if self._eta is not None else self.rate_eta()

    def _fmt(self, n: float) -> str:
        return f"{n / 1e6:.1f} MB" if self.unit == "B" else f"{int(n):,}"

    def line(self) -> str:
        """The plain progress line: description, count/total (%), info, rate, elapsed, ETA."""
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        rate = self._rate()
        rate_s = f"{rate / 1e6:.2f} MB/s" if self.unit == "B" else f"{rate:.3g} {self.unit}/s"
        parts = [f"{self.description} {self._fmt(self.completed)}/{self._fmt(self.total)}{pct}"]
        if self.info:
            parts.append(self.info)
        parts += [rate_s, f"elapsed {human_duration(time.perf_counter() - self._start)}",
                  f"eta {human_duration(self.eta_seconds())}"]
        return " | ".join(parts)

    def update(self, completed: float | None = None, advance: float = 0.0, info: str | None = None,
               eta: float | None = None) -> None:
        """Set or advance the count; `info` replaces the free-text field; `eta` (seconds) overrides the rate's ETA."""
        self.completed = (self.completed if completed is None else completed) + advance
        if info is not None:
            self.info = info
        if eta is not None:
            self._eta = eta
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed, info=self.info,
                              eta=human_duration(self.eta_seconds()))
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self, status: str = "done") -> None:
        """Stop the display; in plain mode print a final line saying how the task ended (no stale ETA)."""
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
            return
        seconds = time.perf_counter() - self._start
        if seconds < 2 and self._last_line == self._start:
            return  # a short task that printed nothing: a last line would only be noise
        elapsed = human_duration(seconds)
        info = f" | {self.info}" if self.info else ""
        print(f"{self.description} {self._fmt(self.completed)}/{self._fmt(self.total)}{info} | {status} after "
              f"{elapsed}", file=self.stream, flush=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("done" if exc_type is None else "stopped")
