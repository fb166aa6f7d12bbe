"""Scaling laws: the fit recovers known laws, compute-optimal allocation matches brute force, probes score an oracle
and a random model as they should, and `plinth scale sweep` / `scale predict` run end to end and resume."""

import json
import math
import random

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from plinth.evaluate.probes import PROBES, _arithmetic_items, _bracket_items, run_probes  # noqa: E402
from plinth.evaluate.scaling import (  # noqa: E402
    CHINCHILLA,
    CHINCHILLA_REFIT,
    compute_optimal,
    emergence,
    fit_scaling_law,
    law,
    predict,
)

TRUE = {"E": 1.8, "A": 30.0, "alpha": 0.35, "B": 200.0, "beta": 0.3}
N = np.repeat([2e4, 6e4, 2e5, 6e5, 2e6], 3)
D = np.tile([2e5, 6e5, 2e6], 5)


def test_fit_recovers_an_exact_law():
    fit = fit_scaling_law(N, law(TRUE, N, D), D, bootstrap=0)
    for key, value in TRUE.items():
        assert fit[key] == pytest.approx(value, rel=1e-3), (key, fit[key])
    assert fit["rmse"] < 1e-6


def test_fit_with_noise_is_close_and_has_intervals():
    rng = np.random.default_rng(1)
    loss = law(TRUE, N, D) * np.exp(rng.normal(0, 0.003, len(N)))  # 0.3% noise
    fit = fit_scaling_law(N, loss, D, bootstrap=100, seed=2)
    for key in ("alpha", "beta"):
        lo, hi = fit["ci95"][key]
        assert abs(fit[key] - TRUE[key]) < 0.05 and lo <= fit[key] <= hi and 0 < hi - lo < 0.3, (key, lo, hi)
    # L(N) at fixed D: E absorbs the data term; alpha is the same law's
    at = D == 2e6
    fit_n = fit_scaling_law(N[at], law(TRUE, N[at], D[at]), bootstrap=0)
    assert fit_n["alpha"] == pytest.approx(0.35, rel=1e-2)
    assert fit_n["E"] == pytest.approx(1.8 + 200.0 * 2e6**-0.3, rel=1e-2)
    p = predict(fit, 6e6, 2e6)
    assert p["ci95"][0] <= p["loss"] <= p["ci95"][1]
    assert p["loss"] == pytest.approx(float(law(TRUE, 6e6, 2e6)), rel=0.02)


def test_compute_optimal_matches_a_brute_force_search():
    c = 1e21
    opt = compute_optimal(CHINCHILLA, c)
    ns = np.geomspace(1e8, 1e12, 20001)
    best = ns[np.argmin(law(CHINCHILLA, ns, c / (6 * ns)))]
    assert opt["N"] == pytest.approx(best, rel=2e-3)
    assert opt["N"] * opt["D"] * 6 == pytest.approx(c)
    # The replication's refit gives Chinchilla's ~20 tokens per parameter (approaches 1 and 2) at 1e21 FLOPs
    assert 18 < compute_optimal(CHINCHILLA_REFIT, c)["tokens_per_parameter"] < 25


def test_too_few_points_is_a_one_line_error():
    from plinth.common import PlinthError

    with pytest.raises(PlinthError, match="at least 6 points"):
        fit_scaling_law(N[:4], law(TRUE, N[:4], D[:4]), D[:4])


class _Oracle(torch.nn.Module):
    """A 'model' whose logits put all mass on the true next token of the rows it is shown (a lookup table)."""

    def __init__(self, rows, vocab, seq_len):
        super().__init__()
        self.table = {tuple(r[:i + 1]): r[i + 1] for r in rows for i in range(len(r) - 1)}
        self.vocab, self.config = vocab, type("C", (), {"seq_len": seq_len})
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        out = torch.full((*ids.shape, self.vocab), -30.0)
        for b, row in enumerate(ids.tolist()):
            for t in range(len(row)):
                nxt = self.table.get(tuple(row[:t + 1]))
                if nxt is not None:
                    out[b, t, nxt] = 30.0
        return out


def _bpe(tmp_path, tiny_data):
    from plinth.config import TokenizerConfig
    from plinth.data.tokenizer import Tokenizer, train_tokenizer

    path = tmp_path / "bpe.json"
    train_tokenizer(TokenizerConfig(input=str(tiny_data["prepared"]), out=str(path), vocab_size=300))
    return Tokenizer.load(path)


def test_probes_random_model_at_chance_and_oracle_perfect(tiny_data, tmp_path):
    from plinth.models import build_model, make_config

    tok = _bpe(tmp_path, tiny_data)
    torch.manual_seed(0)
    model = build_model(make_config("test", {}, vocab_size=tok.vocab_size))
    res = run_probes(model, tok, items=48, seed=3)
    assert set(res) == set(PROBES)
    assert res["copy"]["accuracy"] < 0.2
    for name in ("brackets", "arithmetic"):
        assert abs(res[name]["accuracy"] - res[name]["baseline"]) < 0.25, res[name]

    # The oracle knows every right answer: the choice probes' correct continuations, encoded as the probe will.
    rows = []
    for name, make in (("brackets", _bracket_items), ("arithmetic", _arithmetic_items)):
        prompts, choices, answers = make(random.Random(f"3-{name}"), 48)
        rows += [tok.encode(p) + tok.encode(c[a]) for p, c, a in zip(prompts, choices, answers)]
    oracle = _Oracle(rows, tok.vocab_size, 512)
    res = run_probes(oracle, tok, items=48, seed=3)
    assert res["brackets"]["accuracy"] == 1.0 and res["arithmetic"]["accuracy"] == 1.0


def test_emergence_reading():
    rows = [{"N": n, "probes": {"copy": {"accuracy": a, "baseline": 0.02, "items": 100, "logprob": -a}}}
            for n, a in ((1e4, 0.02), (3e4, 0.03), (1e5, 0.6), (3e5, 0.8))]
    e = emergence(rows, ["copy"])["copy"]
    assert e["emerged"] and e["abrupt"] and "from N = 1e+05" in e["reading"]
    flat = [{**r, "probes": {"copy": {**r["probes"]["copy"], "accuracy": 0.02}}} for r in rows]
    assert not emergence(flat, ["copy"])["copy"]["emerged"]


def _sweep_args(tiny_data, tok_path, shards, out):
    return ["scale", "sweep", "--out", str(out), "--shards", str(shards), "--tokenizer", str(tok_path),
            "--sizes", "1x16", "1x32", "2x32", "2x48", "--tokens", "1024", "2048", "4096", "--seq_len", "32",
            "--batch_size", "4", "--eval_batches", "2", "--probe_items", "6", "--bootstrap", "10", "--no-progress",
            "--device", "cpu"]


def test_scale_sweep_and_predict_end_to_end(tiny_data, tmp_path, capsys):
    from plinth.cli.main import main
    from plinth.config import TokenizeConfig
    from plinth.data.shards import write_shards

    tok = _bpe(tmp_path, tiny_data)
    shards = tmp_path / "shards"
    write_shards(TokenizeConfig(input=str(tiny_data["prepared"]), tokenizer=str(tmp_path / "bpe.json"),
                                out=str(shards), progress=False))
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_data, tmp_path / "bpe.json", shards, out)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "L(N):    alpha" in printed and "L(N, D): alpha" in printed and "predicted loss of 3x64" in printed
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["points"]) == 12 and result["fit_L_ND"]["points"] == 12
    assert all(math.isfinite(r["val_loss"]) and set(r["probes"]) == set(PROBES) for r in result["points"])
    assert (out / "scaling.png").stat().st_size > 10_000 and (out / "probes.png").is_file()
    report = (out / "report.md").read_text()
    assert "alpha =" in report and "beta =" in report and "Chinchilla" in report and "Emergent" in report
    assert tok.vocab_size == result["settings"]["vocab_size"]

    # Rerunning reuses every finished point (no training: same losses, and fast).
    assert main(args) == 0
    assert json.loads((out / "sweep.json").read_text())["points"] == result["points"]
    assert "already finished" in capsys.readouterr().out

    # The held-out check: train the predicted size afterwards and compare.
    assert main(["scale", "predict", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3x64" in printed and "predicted" in printed and "measured" in printed
    check = json.loads(next(out.glob("heldout_3x64_*.json")).read_text())
    assert math.isfinite(check["error"]) and check["law"] == "L(N, D)"
    # ... or check a run made elsewhere
    assert main(["scale", "predict", str(out), "--run", check["run"], "--no-progress"]) == 0


def test_sweep_refuses_bad_sizes_before_training(tmp_path, capsys):
    from plinth.cli.main import main

    assert main(["scale", "sweep", "--out", str(tmp_path / "s"), "--sizes", "2x30", "2x64", "3x96", "4x128"]) == 2
    assert "2x30" in capsys.readouterr().err
    assert main(["scale", "sweep", "--out", str(tmp_path / "s"), "--sizes", "2x32", "2x64"]) == 2
    assert not (tmp_path / "s").exists()
