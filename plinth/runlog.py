"""What a run records about itself: metrics JSONL, TensorBoard events, hardware peak FLOP/s, loss plots."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from plinth.common import atomic_write_bytes


class MetricsLog:
    """Append-only `metrics.jsonl` plus TensorBoard events in `run_dir/tb`.

    On resume the JSONL is truncated to the rows at or before the checkpoint's step, so a resumed run's log reads as
    if it had never stopped.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def _truncate(self, resume_step: int | None) -> None:
        if not self.path.exists():
            return
        if resume_step is None:
            atomic_write_bytes(self.path, b"")
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if row.get("step", 0) <= resume_step:
                kept.append(line)
        atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def log(self, step: int, **metrics: Any) -> None:
        """Write one row (and each numeric value as a TensorBoard scalar)."""
        # Non-finite floats become null: NaN/Infinity are not JSON and break other readers.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        row = {"step": step, "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close both sinks."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


_PEAK_CACHE: dict[tuple[str, str], float] = {}


def measured_peak_flops(device: torch.device, precision: str = "fp32", size: int = 1024, seconds: float = 0.5) -> float:
    """Measure this device's dense matmul FLOP/s at `precision` (the denominator of MFU); cached per process.

    CPUs have no spec-sheet peak we can read portably, so MFU here means "fraction of the matmul rate this machine
    reaches on a large square GEMM", the practical ceiling for a training step. The best of several short bursts is
    kept, after a warm-up, so thread-pool start-up or a neighbour's burst does not understate the peak.
    """
    key = (str(device), precision)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def timed(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    per_call = max(timed(2) / 2, 1e-6)  # also the warm-up
    burst = max(1, int(seconds / 5 / per_call))
    best = min(timed(burst) for _ in range(5)) / burst
    _PEAK_CACHE[key] = 2 * size**3 / best
    return _PEAK_CACHE[key]


# Declared dense (no sparsity) peaks from the vendors' datasheets, FLOP/s: (bf16 tensor cores, fp32 without TF32,
# which is what PyTorch uses for fp32 matmuls by default). Matched in order against torch.cuda.get_device_name().
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100 NVL", 835e12, 60e12),
    ("H100", 989e12, 67e12),  # SXM
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10", 125e12, 31.2e12),
    ("RTX 4090", 165.2e12, 82.6e12),  # bf16 with fp32 accumulation
    ("RTX 3090", 71e12, 35.6e12),
)


def device_peak_flops(device: torch.device, precision: str = "fp32") -> tuple[float, str]:
    """The FLOP/s MFU is measured against on `device`, and where the figure comes from.

    A GPU listed in `GPU_PEAKS` gets its datasheet peak at `precision` ("declared"); any other device, CPUs
    included, gets `measured_peak_flops` ("measured": the best rate of a square GEMM on this process's threads).
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, bf16, fp32 in GPU_PEAKS:
            if key in name:
                return (bf16 if precision == "bf16" else fp32), f"declared: {name} {precision} datasheet peak"
    peak = measured_peak_flops(device, precision)
    return peak, f"measured: {precision} {1024}^3 GEMM on {device} ({torch.get_num_threads()} threads)"


def plot_loss_curve(rows: list[dict], path: str | os.PathLike, title: str = "loss") -> Path:
    """Save a PNG of train (and validation, when present) loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r.get("tokens", r["step"]), r["loss"]) for r in rows if "loss" in r]
    val = [(r.get("tokens", r["step"]), r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file + rename, so a kill never leaves half a picture), close
    it, and return the path. Every report plot goes through here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path
