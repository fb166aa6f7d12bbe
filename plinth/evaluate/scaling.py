"""Scaling laws: fit L(N) = E + A N^-alpha and L(N, D) = E + A N^-alpha + B D^-beta to measured losses, with
bootstrap confidence intervals, predict beyond the data, allocate a compute budget, and plot it all.

The fit minimises the squared *relative* error, sum ((L_fit - L) / L)^2 (about the squared error of log L, the
scale Hoffmann et al. 2022 fit on), by variable projection (Golub & Pereyra 1973): for given exponents the law is
linear in (E, A, B), solved exactly by non-negative least squares, so only the exponents are searched, on a grid and
then with Nelder-Mead. This is fast enough for hundreds of bootstrap refits and has no starting-point lottery.
Confidence intervals are percentiles of refits on bootstrap resamples of the points.

N is the non-embedding parameter count (Kaplan et al. 2020: the embedding adds parameters but barely any compute,
and leaving it out gives straighter laws at small sizes); D is training tokens; compute C ~ 6 N D for allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plinth.common import PlinthError
from plinth.runlog import save_figure

# Hoffmann et al. (2022), approach 3 as published: L(N, D) = 1.69 + 406.4 N^-0.34 + 410.7 D^-0.28 (N: all
# parameters; their tokenizer and data). Besiroglu et al. (2024, "Chinchilla scaling: a replication attempt") refit
# the same data and got parameters that agree with Chinchilla's approaches 1 and 2 (~20 tokens per parameter; the
# published ones give 50 at 1e21 FLOPs). Both allocations are reference lines; the scale of their loss is not ours.
CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
CHINCHILLA_REFIT = {"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658}
EXPONENT_RANGE = (0.01, 2.0)


def require_scipy() -> None:
    """Raise a one-line PlinthError when scipy (the `scale` extra) is not installed."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        raise PlinthError("scaling-law fits need scipy: pip install 'plinth[scale]'") from None


def _linear_part(exps: np.ndarray, n: np.ndarray, d: np.ndarray | None, loss: np.ndarray) -> tuple[np.ndarray, float]:
    """For exponents (alpha[, beta]): the non-negative (E, A[, B]) of least relative error, and that error."""
    from scipy.optimize import nnls

    cols = [np.ones_like(n), n ** -exps[0]] + ([d ** -exps[1]] if d is not None else [])
    x = np.stack(cols, axis=1) / loss[:, None]  # dividing by L makes the residuals relative
    coef, norm = nnls(x, np.ones_like(loss))
    return coef, float(norm**2)


def _fit(n: np.ndarray, d: np.ndarray | None, loss: np.ndarray, grid: int) -> dict[str, float]:
    from scipy.optimize import minimize

    lo, hi = EXPONENT_RANGE
    axis = np.geomspace(lo, hi, grid)
    points = [np.array([a]) for a in axis] if d is None else [np.array([a, b]) for a in axis for b in axis]
    start = min(points, key=lambda e: _linear_part(e, n, d, loss)[1])

    def sse(e: np.ndarray) -> float:
        return _linear_part(np.clip(e, lo, hi), n, d, loss)[1]

    exps = np.clip(minimize(sse, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-14}).x, lo, hi)
    coef, err = _linear_part(exps, n, d, loss)
    out = {"E": float(coef[0]), "A": float(coef[1]), "alpha": float(exps[0])}
    if d is not None:
        out.update(B=float(coef[2]), beta=float(exps[1]))
    return out


def fit_scaling_law(n: Sequence[float], loss: Sequence[float], d: Sequence[float] | None = None,
                    bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Fit L(N) (when `d` is None) or L(N, D) to the points; return the parameters, their 95% bootstrap intervals,
    the fit's rmse and the resamples' parameters (for prediction intervals).

    Raises PlinthError with fewer points than parameters + 1 (4 for L(N), 6 for L(N, D)), or without scipy.
    """
    require_scipy()
    two = d is not None
    n_arr, l_arr = np.asarray(n, float), np.asarray(loss, float)
    d_arr = np.asarray(d, float) if two else None
    need = 6 if two else 4
    if len(n_arr) < need:
        raise PlinthError(f"fitting {'L(N, D)' if two else 'L(N)'} needs at least {need} points, got {len(n_arr)}")
    params = _fit(n_arr, d_arr, l_arr, grid=40 if two else 200)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n_arr), len(n_arr))
        if len(set(idx.tolist())) < need - 1:
            continue  # too few distinct points to pin the parameters down
        draws.append(_fit(n_arr[idx], d_arr[idx] if two else None, l_arr[idx], grid=15 if two else 60))
    ci = {k: [float(np.percentile([p[k] for p in draws], 2.5)), float(np.percentile([p[k] for p in draws], 97.5))]
          for k in params} if draws else {}
    pred = law(params, n_arr, d_arr)
    return {"law": "L(N, D)" if two else "L(N)", **params, "ci95": ci, "points": len(n_arr),
            "rmse": float(np.sqrt(np.mean((pred - l_arr) ** 2))), "bootstrap": draws}


def law(params: dict[str, float], n: float | np.ndarray, d: float | np.ndarray | None = None) -> Any:
    """The fitted loss at N (and D): E + A N^-alpha (+ B D^-beta)."""
    out = params["E"] + params["A"] * np.power(n, -params["alpha"])
    if d is not None and "B" in params:
        out = out + params["B"] * np.power(d, -params["beta"])
    return out


def predict(fit: dict[str, Any], n: float, d: float | None = None) -> dict[str, float]:
    """The fitted loss at (N, D) with a 95% interval from the bootstrap refits."""
    value = float(law(fit, n, d))
    draws = [float(law(p, n, d)) for p in fit.get("bootstrap", [])]
    lo, hi = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))) if draws else (value, value)
    return {"loss": value, "ci95": [lo, hi]}


def compute_optimal(params: dict[str, float], flops: float) -> dict[str, float]:
    """N and D minimising L(N, D) under C = 6 N D (Hoffmann et al. 2022, eq. 4): N = G (C/6)^(beta/(alpha+beta)),
    D = (C/6)^(alpha/(alpha+beta)) / G with G = (alpha A / (beta B))^(1/(alpha+beta))."""
    a, b = params["alpha"], params["beta"]
    g = (a * params["A"] / (b * params["B"])) ** (1 / (a + b))
    n = g * (flops / 6) ** (b / (a + b))
    d = (flops / 6) ** (a / (a + b)) / g
    return {"flops": flops, "N": n, "D": d, "tokens_per_parameter": d / n, "loss": float(law(params, n, d))}


def frontier(params: dict[str, float], flops: np.ndarray) -> np.ndarray:
    """The lowest loss reachable with each compute budget (along the compute-optimal allocation)."""
    return np.array([compute_optimal(params, float(c))["loss"] for c in flops])


# ----------------------------------------------------------------------------------------------------------------------
# Emergence


def emergence(rows: list[dict[str, Any]], probes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per probe, in order of N: accuracies, whether each is above its baseline, and an honest one-line reading.

    "Emerged" means: at its baseline at the smallest sizes and clearly above it (2.58 binomial standard errors) from
    some size on, staying there. "Abrupt" means one step between neighbouring sizes covers more than half of the rise
    from the smallest to the largest size.
    """
    from plinth.evaluate.probes import above_baseline

    out = {}
    rows = sorted(rows, key=lambda r: r["N"])
    for name in probes:
        acc = [r["probes"][name]["accuracy"] for r in rows]
        base = [r["probes"][name]["baseline"] for r in rows]
        above = [above_baseline(a, b, r["probes"][name]["items"]) for a, b, r in zip(acc, base, rows)]
        first = next((i for i in range(len(above)) if all(above[i:])), None)
        rise = acc[-1] - acc[0]
        steps = [acc[i + 1] - acc[i] for i in range(len(acc) - 1)]
        abrupt = bool(steps) and rise > 0 and max(steps) > rise / 2
        if first is None:
            reading = f"not above its baseline at every size from some size on (accuracy {acc[0]:.2f} -> {acc[-1]:.2f})"
        elif first == 0:
            reading = (f"above its baseline already at the smallest size (accuracy {acc[0]:.2f} -> {acc[-1]:.2f}): "
                       "present throughout, not emerging within this range")
        else:
            reading = (f"emerged: at baseline up to N = {rows[first - 1]['N']:.3g}, above it from N = "
                       f"{rows[first]['N']:.3g} (accuracy {acc[0]:.2f} -> {acc[-1]:.2f}; "
                       f"{'abrupt' if abrupt else 'gradual'} rise)")
        out[name] = {"accuracy": acc, "baseline": base, "above_baseline": above, "abrupt": abrupt,
                     "logprob": [r["probes"][name]["logprob"] for r in rows], "reading": reading,
                     "emerged": first is not None and first > 0}
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Plots


def plot_sweep(rows: list[dict[str, Any]], fit_n: dict[str, Any] | None, fit_nd: dict[str, Any] | None,
               prediction: dict[str, Any] | None, path: str | Path, heldout: dict[str, Any] | None = None) -> Path:
    """Loss vs parameters and vs compute (log-log, points and fitted curves) and compute-optimal N vs compute with
    the Chinchilla reference line; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_c, ax_opt) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=110)
    budgets = sorted({r["tokens"] for r in rows})
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(budgets)))
    n_all = np.array([r["N"] for r in rows])
    n_line = np.geomspace(n_all.min() / 1.5, (prediction or {}).get("N", n_all.max()) * 1.5, 100)
    for budget, colour in zip(budgets, colours):
        pts = sorted((r["N"], r["val_loss"]) for r in rows if r["tokens"] == budget)
        ax_n.plot(*zip(*pts), "o", color=colour, label=f"D = {budget / 1e6:.2g}M tokens")
        if fit_nd:
            ax_n.plot(n_line, law(fit_nd, n_line, budget), "-", color=colour, lw=1)
    if fit_n:
        ax_n.plot(n_line, law(fit_n, n_line), "--", color="k", lw=1,
                  label=f"L(N) at D = {max(budgets) / 1e6:.2g}M: alpha = {fit_n['alpha']:.2f}")
    if prediction:
        lo, hi = prediction["ci95"]
        err = [[prediction["loss"] - lo], [hi - prediction["loss"]]]
        ax_n.errorbar([prediction["N"]], [prediction["loss"]], yerr=err, fmt="*", ms=12, color="tab:red",
                      label="prediction (95% CI)")
    if heldout:
        ax_n.plot([heldout["N"]], [heldout["val_loss"]], "X", ms=10, color="k", label="measured afterwards")
    ax_n.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="validation loss (nats/token)",
             title="loss vs parameters")
    ax_n.legend(fontsize=7)

    # Compute as the laws count it, C = 6 N D (non-embedding N): the table and sweep.json also give the measured
    # FLOPs, which at these sizes are dominated by the vocabulary projection and attention.
    flops = np.array([6 * r["N"] * r["tokens"] for r in rows])
    for budget, colour in zip(budgets, colours):
        pts = sorted((6 * r["N"] * r["tokens"], r["val_loss"]) for r in rows if r["tokens"] == budget)
        ax_c.plot(*zip(*pts), "o-", color=colour, lw=0.6, label=f"D = {budget / 1e6:.2g}M")
    if fit_nd:
        c_line = np.geomspace(flops.min() / 2, flops.max() * 10, 60)
        ax_c.plot(c_line, frontier(fit_nd, c_line), "--", color="k", lw=1, label="fitted compute frontier")
    ax_c.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs, non-embedding N)",
             ylabel="validation loss (nats/token)", title="loss vs compute")
    ax_c.legend(fontsize=7)

    c_line = np.geomspace(flops.min() / 10, 1e24, 60)
    ax_opt.plot(c_line, [compute_optimal(CHINCHILLA, c)["N"] for c in c_line], "-", color="tab:gray",
                label="Chinchilla fit (Hoffmann et al. 2022)")
    ax_opt.plot(c_line, [compute_optimal(CHINCHILLA_REFIT, c)["N"] for c in c_line], ":", color="tab:gray",
                label="Chinchilla refit (Besiroglu et al. 2024)")
    if fit_nd:
        ax_opt.plot(c_line, [compute_optimal(fit_nd, c)["N"] for c in c_line], "-", color="tab:blue",
                    label=f"this fit: N_opt ~ C^{fit_nd['beta'] / (fit_nd['alpha'] + fit_nd['beta']):.2f}")
        ax_opt.axvspan(flops.min(), flops.max(), color="tab:blue", alpha=0.1, label="range of this sweep")
    ax_opt.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="compute-optimal N",
               title="compute-optimal model size")
    ax_opt.legend(fontsize=7)
    return save_figure(fig, path)


def plot_probes(rows: list[dict[str, Any]], probes: Sequence[str], path: str | Path) -> Path:
    """Probe accuracy (and baseline) against N and against compute, beside the loss, at the largest token budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = max(r["tokens"] for r in rows)
    rows = sorted((r for r in rows if r["tokens"] == budget), key=lambda r: r["N"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=110)
    for ax, key, label in ((axes[0], "N", "non-embedding parameters N"), (axes[1], "flops", "training FLOPs")):
        x = [r[key] for r in rows]
        for i, name in enumerate(probes):
            colour = f"C{i}"
            ax.plot(x, [r["probes"][name]["accuracy"] for r in rows], "o-", color=colour, label=name)
            ax.plot(x, [r["probes"][name]["baseline"] for r in rows], ":", color=colour, lw=1)
        ax.set(xscale="log", xlabel=label, ylabel="accuracy", ylim=(-0.02, 1.02),
               title=f"probes vs {key} (D = {budget / 1e6:.2g}M tokens; dotted: baseline)")
        ax.legend(fontsize=7)
    axes[2].plot([r["N"] for r in rows], [r["val_loss"] for r in rows], "o-k")
    axes[2].set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="validation loss",
                title="loss, same runs")
    return save_figure(fig, path)
