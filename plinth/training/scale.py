"""`plinth scale sweep` and `plinth scale predict`: measure scaling instead of taking it on faith.

A sweep trains every model size on every token budget with the shared training run (`training.lm.pretrain`; each
point is an ordinary run folder under OUT/points/, so a stopped sweep resumes point by point and inside a point),
scores the same validation windows and the built-in probes (`evaluate.probes`) on each, then fits L(N) and L(N, D)
with bootstrap intervals (`evaluate.scaling`), predicts a larger model, allocates a compute budget, plots, and writes
OUT/sweep.json and OUT/report.md. `predict` trains (or reads) a run made afterwards and compares it with the
prediction.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from plinth.artifacts import SUMMARY, read_json, resolve_checkpoint
from plinth.common import PlinthError, atomic_write_json, atomic_write_text, human_count, human_duration
from plinth.config import (
    DataConfig,
    DistributedConfig,
    OptimConfig,
    PrepareConfig,
    PretrainConfig,
    RunConfig,
    ScalePredictConfig,
    ScaleSweepConfig,
    SystemConfig,
    TokenizeConfig,
    TokenizerConfig,
    validate,
)
from plinth.evaluate.probes import PROBES, run_probes
from plinth.evaluate.scaling import (
    CHINCHILLA,
    CHINCHILLA_REFIT,
    compute_optimal,
    emergence,
    fit_scaling_law,
    plot_probes,
    plot_sweep,
    predict,
    require_scipy,
)
from plinth.models.gpt import GPTConfig, config_flops_per_token, config_params

SIZE = re.compile(r"(\d+)x(\d+)")
SWEEP_JSON, POINTS_JSON = "sweep.json", "points.json"


# ----------------------------------------------------------------------------------------------------------------------
# Sizes and points


def parse_size(size: str, where: str = "sizes") -> dict[str, int]:
    """'4x128' -> GPT fields: 4 layers, width 128, heads of 32 (of 16 when the width is not a multiple of 32)."""
    m = SIZE.fullmatch(size.strip())
    if not m or int(m[1]) < 1 or int(m[2]) < 16 or int(m[2]) % 16:
        raise PlinthError(f"{where}: {size!r} is not LAYERSxWIDTH with a width that is a multiple of 16 (e.g. 4x128)")
    layers, width = int(m[1]), int(m[2])
    heads = width // 32 if width % 32 == 0 else width // 16
    return {"n_layer": layers, "d_model": width, "n_head": heads, "n_kv_head": heads}


def next_size(size: str) -> str:
    """One step past `size` along the sweep's ladder: a layer more, 1.5x the width (a multiple of 32)."""
    arch = parse_size(size)
    return f"{arch['n_layer'] + 1}x{32 * max(1, round(arch['d_model'] * 1.5 / 32))}"


def _model_config(size: str, seq_len: int, vocab_size: int) -> GPTConfig:
    return GPTConfig(name=size, vocab_size=vocab_size, seq_len=seq_len, **parse_size(size))


def _point_name(size: str, tokens: int) -> str:
    return f"{size}_{tokens}"


def _steps(tokens: int, cfg: dict[str, Any]) -> int:
    return max(1, math.ceil(tokens / (cfg["batch_size"] * cfg["seq_len"])))


def _pretrain_config(size: str, tokens: int, cfg: dict[str, Any], out: Path) -> PretrainConfig:
    steps = _steps(tokens, cfg)
    return PretrainConfig(
        model="tiny", arch={**parse_size(size), "seq_len": cfg["seq_len"]},
        data=DataConfig(shards=cfg["shards"], tokenizer=cfg["tokenizer"]),
        optim=OptimConfig(lr=cfg["lr"], batch_size=cfg["batch_size"], warmup_steps=max(1, steps // 20)),
        run=RunConfig(out_dir=str(out), max_steps=steps, eval_every=0, eval_batches=cfg["eval_batches"],
                      ckpt_every=max(1, steps // 4), progress=cfg["progress"], progress_seconds=30.0),
        system=SystemConfig(device=cfg["device"], precision=cfg["precision"], compile="off", seed=cfg["seed"]),
        dist=DistributedConfig(nproc=cfg["nproc"]))


def _train_point(size: str, tokens: int, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train (or resume, or reuse) one point and probe it; its row of the sweep table."""
    from plinth.pipelines import load
    from plinth.training.lm import pretrain

    summary = pretrain(_pretrain_config(size, tokens, cfg, out))
    if summary.get("status") != "completed":
        raise PlinthError(f"{out}: the run stopped ({summary.get('status')}); rerun the sweep to continue it")
    probes_path = out / "probes.json"
    if cfg["probe_items"] and not probes_path.is_file():
        lm = load(out, device=cfg["device"])
        probes = run_probes(lm.model, lm.tokenizer, cfg["probe_items"], cfg["seed"], cfg["precision"])
        atomic_write_json(probes_path, probes)
    return _row(size, tokens, out, summary)


def _row(size: str, tokens: int, run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    config = read_json(resolve_checkpoint(run) / "config.json", "model config")
    mcfg = GPTConfig(**{k: v for k, v in config.items() if k not in ("family", "format_version")})
    probes = read_json(run / "probes.json", "probe results") if (run / "probes.json").is_file() else {}
    return {"size": size, "n_layer": mcfg.n_layer, "d_model": mcfg.d_model, "N": config_params(mcfg, True),
            "N_total": config_params(mcfg), "tokens": summary["tokens"], "budget": tokens,
            "flops_per_token": config_flops_per_token(mcfg), "flops": summary["train_flops"],
            "val_loss": summary["val_loss"], "val_bpb": summary.get("val_bpb"), "wall_s": summary["wall_s"],
            "mfu": summary.get("mfu"), "run": str(run), "probes": probes}


# ----------------------------------------------------------------------------------------------------------------------
# The sweep


def _prepare_data(cfg: ScaleSweepConfig, out: Path) -> tuple[str, str]:
    """The shards and tokenizer to train on: the given ones, or the built-in corpus prepared once into OUT/data."""
    from plinth.data.prepare import prepare
    from plinth.data.shards import write_shards
    from plinth.data.tokenizer import train_tokenizer

    if cfg.shards:
        if not cfg.tokenizer:
            raise PlinthError("scale sweep: --shards needs --tokenizer (the tokenizer.json they were written with)")
        return str(Path(cfg.shards).resolve()), str(Path(cfg.tokenizer).resolve())
    data = out / "data"
    prepared, tok, shards = data / "prepared", data / "tokenizer.json", data / "shards"
    if not (prepared / "report.json").is_file():
        prepare(PrepareConfig(inputs=[f"builtin:{cfg.corpus}"], out=str(prepared), val_fraction=0.02,
                              progress=cfg.progress))
    if not tok.is_file():
        train_tokenizer(TokenizerConfig(input=str(prepared), out=str(tok), vocab_size=cfg.vocab_size))
    if not (shards / "train" / "manifest.json").is_file():
        write_shards(TokenizeConfig(input=str(prepared), tokenizer=str(tok), out=str(shards), progress=cfg.progress))
    return str(shards.resolve()), str(tok.resolve())


def _check(cfg: ScaleSweepConfig) -> None:
    validate(cfg, "scale sweep")
    require_scipy()  # before hours of training, not after
    for size in [*cfg.sizes, *([cfg.predict] if cfg.predict else [])]:
        parse_size(size, "scale sweep: --sizes/--predict")
    if len(set(cfg.sizes)) < 4:
        raise PlinthError(f"scale sweep: --sizes needs at least 4 different sizes to fit L(N), got {len(cfg.sizes)}")
    if not cfg.tokens or any(t < cfg.batch_size * cfg.seq_len for t in cfg.tokens):
        raise PlinthError(f"scale sweep: every --tokens budget must cover one step (batch_size x seq_len = "
                          f"{cfg.batch_size * cfg.seq_len} tokens), got {cfg.tokens}")


def sweep(cfg: ScaleSweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep in `cfg.out`; return what sweep.json holds. See the module docstring."""
    _check(cfg)
    started = time.perf_counter()
    out = Path(cfg.out).resolve()
    shards, tokenizer = _prepare_data(cfg, out)
    from plinth.data.tokenizer import Tokenizer

    vocab = Tokenizer.load(tokenizer).vocab_size
    settings = {"shards": shards, "tokenizer": tokenizer, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
                "lr": cfg.lr, "eval_batches": cfg.eval_batches, "probe_items": cfg.probe_items, "seed": cfg.seed,
                "device": cfg.device, "precision": cfg.precision, "nproc": cfg.nproc, "progress": cfg.progress,
                "vocab_size": vocab}
    points = sorted(((s, t) for s in dict.fromkeys(cfg.sizes) for t in sorted(set(cfg.tokens))),
                    key=lambda p: config_flops_per_token(_model_config(p[0], cfg.seq_len, vocab)) * p[1])
    total = sum(config_flops_per_token(_model_config(s, cfg.seq_len, vocab)) * t for s, t in points)
    rows, done_flops = [], 0.0
    for i, (size, tokens) in enumerate(points, 1):
        flops = config_flops_per_token(_model_config(size, cfg.seq_len, vocab)) * tokens
        elapsed = time.perf_counter() - started
        eta = elapsed / done_flops * (total - done_flops) if done_flops else None
        print(f"\n== point {i}/{len(points)}: {size} on {human_count(tokens)} tokens ({human_count(flops)} FLOPs; "
              f"sweep {done_flops / total:.0%} of its FLOPs done, ETA {human_duration(eta) if eta else '?'})",
              flush=True)
        rows.append(_train_point(size, tokens, settings, out / "points" / _point_name(size, tokens)))
        done_flops += flops
        atomic_write_json(out / POINTS_JSON, rows)
    result = analyse(rows, cfg, settings)
    result["sweep_wall_s"] = time.perf_counter() - started
    atomic_write_json(out / SWEEP_JSON, result)
    write_report(out, result)
    print(f"\nsweep done in {human_duration(result['sweep_wall_s'])}: {out / 'report.md'}", flush=True)
    return result


def analyse(rows: list[dict[str, Any]], cfg: ScaleSweepConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """Fits, prediction, compute-optimal allocation, emergence readings and plots for the sweep's rows."""
    out = Path(cfg.out).resolve()
    budgets = sorted({r["budget"] for r in rows})
    largest = [r for r in rows if r["budget"] == budgets[-1]]
    fit_n = fit_scaling_law([r["N"] for r in largest], [r["val_loss"] for r in largest], bootstrap=cfg.bootstrap,
                            seed=cfg.seed)
    fit_nd = None
    if len(budgets) >= 3:
        fit_nd = fit_scaling_law([r["N"] for r in rows], [r["val_loss"] for r in rows],
                                 [r["tokens"] for r in rows], bootstrap=cfg.bootstrap, seed=cfg.seed)
    size = cfg.predict or next_size(max(cfg.sizes, key=lambda s: config_params(_model_config(s, 8, 256), True)))
    n_pred = config_params(_model_config(size, cfg.seq_len, settings["vocab_size"]), True)
    d_pred = max(r["tokens"] for r in largest)
    prediction = {"size": size, "N": n_pred, "tokens": d_pred, "budget": budgets[-1],
                  "from_L_N": predict(fit_n, n_pred), **({"from_L_ND": predict(fit_nd, n_pred, d_pred)} if fit_nd
                                                          else {})}
    prediction.update(prediction.get("from_L_ND", prediction["from_L_N"]))
    budget = cfg.budget_flops or 100 * max(r["flops"] for r in rows)
    optimal = {"flops": budget, "this_fit": compute_optimal(fit_nd, budget) if fit_nd else None,
               "chinchilla": compute_optimal(CHINCHILLA, budget),
               "chinchilla_refit": compute_optimal(CHINCHILLA_REFIT, budget)}
    probes = [p for p in PROBES if all(p in r["probes"] for r in largest)]
    emerged = emergence(largest, probes) if probes else {}
    plot_sweep(rows, fit_n, fit_nd, prediction, out / "scaling.png")
    if probes:
        plot_probes(rows, probes, out / "probes.png")
    strip = lambda fit: {k: v for k, v in fit.items() if k != "bootstrap"} if fit else None  # noqa: E731
    return {"settings": settings, "points": rows, "fit_L_N": strip(fit_n), "fit_L_ND": strip(fit_nd),
            "prediction": prediction, "compute_optimal": optimal, "emergence": emerged,
            "_fits": {"L_N": fit_n, "L_ND": fit_nd}}


# ----------------------------------------------------------------------------------------------------------------------
# The report


def _ci(fit: dict[str, Any], key: str) -> str:
    lo, hi = fit["ci95"].get(key, (math.nan, math.nan))
    return f"{fit[key]:.3g} [{lo:.3g}, {hi:.3g}]"


def write_report(out: Path, result: dict[str, Any]) -> Path:
    """OUT/report.md: points, fits with intervals, prediction, compute-optimal allocation, emergence, plots."""
    rows, fit_n, fit_nd = result["points"], result["fit_L_N"], result["fit_L_ND"]
    probes = list(result["emergence"])
    lines = ["# Scaling sweep", "",
             f"{len(rows)} runs: sizes {', '.join(dict.fromkeys(r['size'] for r in rows))} x token budgets "
             f"{', '.join(human_count(b) for b in sorted({r['budget'] for r in rows}))}; context "
             f"{result['settings']['seq_len']}, batch {result['settings']['batch_size']}, vocabulary "
             f"{result['settings']['vocab_size']}; loss = validation cross-entropy (nats/token) on the same "
             f"windows for every run. N = non-embedding parameters.", "",
             "| size | N | tokens | FLOPs | val loss | bpb | wall | " + " | ".join(probes) + " |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(probes)]
    for r in sorted(rows, key=lambda r: (r["N"], r["tokens"])):
        accs = [f"{r['probes'][p]['accuracy']:.2f}" for p in probes]
        lines.append(f"| {r['size']} | {human_count(r['N'])} | {human_count(r['tokens'])} | {r['flops']:.3g} | "
                     f"{r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['wall_s']:.0f}s | " + " | ".join(accs) + " |")
    lines += ["", "## Fits (95% bootstrap intervals)", "",
              f"- L(N) = E + A N^-alpha at D = {human_count(max(r['tokens'] for r in rows))} tokens: E = "
              f"{_ci(fit_n, 'E')}, A = {_ci(fit_n, 'A')}, **alpha = {_ci(fit_n, 'alpha')}** (rmse "
              f"{fit_n['rmse']:.4f}, {fit_n['points']} points)"]
    if fit_nd:
        lines.append(f"- L(N, D) = E + A N^-alpha + B D^-beta: E = {_ci(fit_nd, 'E')}, A = {_ci(fit_nd, 'A')}, "
                     f"**alpha = {_ci(fit_nd, 'alpha')}**, B = {_ci(fit_nd, 'B')}, **beta = {_ci(fit_nd, 'beta')}** "
                     f"(rmse {fit_nd['rmse']:.4f}, {fit_nd['points']} points)")
    else:
        lines.append("- L(N, D): not fitted (it needs 3 or more token budgets to separate E, B and beta)")
    p = result["prediction"]
    lines += ["", "## Prediction", "",
              f"{p['size']} (N = {human_count(p['N'])}) on {human_count(p['tokens'])} tokens: predicted loss "
              f"**{p['loss']:.4f}** (95% interval {p['ci95'][0]:.4f} - {p['ci95'][1]:.4f}); check it with "
              f"`plinth scale predict {out}`."]
    opt = result["compute_optimal"]
    lines += ["", f"## Compute-optimal allocation for C = {opt['flops']:.3g} FLOPs (C = 6ND)", ""]
    for name, o in (("this fit", opt["this_fit"]), ("Chinchilla, Hoffmann et al. 2022 (reference)", opt["chinchilla"]),
                    ("Chinchilla refit, Besiroglu et al. 2024 (reference)", opt["chinchilla_refit"])):
        if o:
            lines.append(f"- {name}: N = {human_count(o['N'])}, D = {human_count(o['D'])} tokens "
                         f"({o['tokens_per_parameter']:.3g} tokens per parameter)")
    if probes:
        lines += ["", "## Emergent abilities? (largest token budget)", ""]
        lines += [f"- **{name}**: {e['reading']}" for name, e in result["emergence"].items()]
    lines += ["", "![loss vs parameters and compute](scaling.png)", ""]
    if probes:
        lines += ["![probes](probes.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Checking a prediction


def check_prediction(cfg: ScalePredictConfig) -> dict[str, Any]:
    """Compare the sweep's fitted prediction for a size with a run trained afterwards (trained here unless `run`)."""
    validate(cfg, "scale predict")
    sweep_dir = Path(cfg.sweep).resolve()
    result = read_json(sweep_dir / SWEEP_JSON, "sweep results", required=("settings", "points", "_fits"))
    settings, fits = result["settings"], result["_fits"]
    if cfg.run:
        run = Path(cfg.run).resolve()
        summary = read_json(run / SUMMARY, "run summary")
        config = read_json(resolve_checkpoint(run) / "config.json", "model config")
        mcfg = GPTConfig(**{k: v for k, v in config.items() if k not in ("family", "format_version")})
        size, tokens = f"{mcfg.n_layer}x{mcfg.d_model}", summary["tokens"]
        row = _row(size, tokens, run, summary)
    else:
        size = cfg.size or result["prediction"]["size"]
        parse_size(size, "scale predict: --size")
        tokens = cfg.tokens or result["prediction"]["budget"]
        row = _train_point(size, tokens, {**settings, "progress": cfg.progress},
                           sweep_dir / "heldout" / _point_name(size, tokens))
    if "val_loss" not in row or row["val_loss"] is None:
        raise PlinthError(f"{row['run']}: the run has no validation loss to compare")
    fit = fits["L_ND"] or fits["L_N"]
    pred = predict(fit, row["N"], row["tokens"] if fits["L_ND"] else None)
    error = row["val_loss"] - pred["loss"]
    check = {"size": size, "N": row["N"], "tokens": row["tokens"], "law": fit["law"], "predicted": pred["loss"],
             "ci95": pred["ci95"], "measured": row["val_loss"], "error": error,
             "relative_error": error / row["val_loss"],
             "inside_ci95": pred["ci95"][0] <= row["val_loss"] <= pred["ci95"][1], "run": row["run"]}
    atomic_write_json(sweep_dir / f"heldout_{_point_name(size, row['tokens'])}.json", {**check, "row": row})
    plot_sweep(result["points"], fits["L_N"], fits["L_ND"], {**result["prediction"], "N": row["N"], **pred},
               sweep_dir / "scaling.png", heldout=row)
    return check
