"""Continued pretraining: forgetting measured before/after on both domains, the new-domain loss drops, replay batches
come from the original data in the stated proportion, the learning rate re-warms, kill-and-resume is bit for bit,
bad input is a one-line error that writes nothing."""

import json

import pytest
import torch

from plinth.cli.main import main

torch.set_num_threads(1)

_VERSES = ("and the lord spake unto moses saying thou shalt keep my statutes and my judgments "
           "for i am the lord thy god which brought thee out of the land of egypt").split()


def _new_domain(folder, docs=16, words=150):
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        text = " ".join(_VERSES[(d * 3 + i * (d % 4 + 1)) % len(_VERSES)] for i in range(words))
        (folder / f"book_{d:02d}.txt").write_text(f"Chapter {d}.\n{text}.\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory):
    """A tiny model pretrained for 30 steps on the tiny corpus (its run names the shards), and a new domain."""
    root = tmp_path_factory.mktemp("continue")
    run = root / "base"
    assert main(["pretrain", "--model", "test", "--arch.d_model", "32", "--arch.seq_len", "32", "--data.shards",
                 str(tiny_data["shards"]), "--data.tokenizer", str(tiny_data["tokenizer"]), "--run.out_dir", str(run),
                 "--run.max_steps", "30", "--run.eval_every", "0", "--run.ckpt_every", "0", "--no-run.progress",
                 "--optim.batch_size", "8", "--optim.lr", "1e-2", "--optim.warmup_steps", "3", "--system.device",
                 "cpu", "--system.precision", "fp32", "--system.compile", "off"]) == 0
    return {"run": run, "new": _new_domain(root / "bible"), "root": root}


def _args(base, out, steps=8, *extra):
    return ["finetune", "continue", str(base["run"]), "--data", str(base["new"]), "--run.out_dir", str(out),
            "--run.max_steps", str(steps), "--run.eval_every", "4", "--run.ckpt_every", "4", "--run.eval_batches",
            "4", "--run.log_every", "1", "--no-run.progress", "--optim.batch_size", "8", "--optim.lr", "5e-3",
            "--optim.warmup_steps", "3", "--val_fraction", "0.2", "--system.device", "cpu", "--system.precision",
            "fp32", "--system.compile", "off", *extra]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_forgetting_is_measured_on_both_domains_and_the_new_domain_loss_drops(base, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(base, out, 12, "--replay", "0.25")) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = summary["forgetting"]
    assert set(table) == {"new", "original"}
    for row in table.values():
        assert {"before_loss", "after_loss", "before_bpb", "after_bpb", "loss_change", "bpb_change"} <= set(row)
    assert table["new"]["after_loss"] < table["new"]["before_loss"] - 0.1  # it adapted to the new domain
    assert summary["original_domain"].endswith("shards")  # found through the base run's own config
    assert summary["replay"] == 0.25 and summary["steps"] == 12
    report = (out / "report.md").read_text()
    assert "| new |" in report and "| original |" in report and "forgetting.png" in report
    assert (out / "forgetting.png").stat().st_size > 1000
    # the learning rate re-warms from near zero to the new peak, then decays
    lrs = [r["lr"] for r in _metrics(out) if "lr" in r]
    assert lrs[0] == pytest.approx(5e-3 / 3) and lrs[2] == pytest.approx(5e-3) and lrs[-1] < 5e-3 * 0.5
    assert lrs[:3] == sorted(lrs[:3]) and lrs[2:] == sorted(lrs[2:], reverse=True)
    # the evaluations log both domains; the checkpoint is a model folder that loads and generates
    evals = [r for r in _metrics(out) if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12] and all("val_original_loss" in r for r in evals)
    import plinth

    lm = plinth.load(out, device="cpu")
    assert isinstance(lm.generate("the lord", max_new_tokens=4, temperature=0), str)


def test_replay_batches_come_from_the_original_data_in_the_stated_proportion(tiny_data, tmp_path):
    from plinth.config import PrepareConfig, TokenizeConfig
    from plinth.data.prepare import prepare
    from plinth.data.shards import TokenShards, WindowSampler, write_shards
    from plinth.training.continual import ReplayBatches, is_replay

    prepare(PrepareConfig(inputs=[str(_new_domain(tmp_path / "raw"))], out=str(tmp_path / "p"), progress=False))
    write_shards(TokenizeConfig(input=str(tmp_path / "p"), tokenizer=str(tiny_data["tokenizer"]),
                                out=str(tmp_path / "s"), progress=False))
    new, old = TokenShards(tmp_path / "s" / "train"), TokenShards(tiny_data["shards"] / "train")
    for fraction, n in ((0.25, 40), (0.1, 50), (0.5, 10)):
        batches = ReplayBatches(WindowSampler(new, 16, 4, seed=1), WindowSampler(old, 16, 4, seed=2), fraction)
        ref_new, ref_old = WindowSampler(new, 16, 4, seed=1), WindowSampler(old, 16, 4, seed=2)
        flags = []
        for _ in range(n):
            x, y = batches.next_batch()
            flags.append(batches.last_was_replay)
            expected = (ref_old if flags[-1] else ref_new).next_batch()
            assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
        assert sum(flags) == round(fraction * n)  # exactly the stated share, spread evenly
        assert flags == [is_replay(i, fraction) for i in range(n)]
    assert not any(is_replay(i, 0.0) for i in range(100))
    # the position resumes exactly
    batches = ReplayBatches(WindowSampler(new, 16, 4, seed=1), WindowSampler(old, 16, 4, seed=2), 0.25)
    for _ in range(5):
        batches.next_batch()
    again = ReplayBatches(WindowSampler(new, 16, 4, seed=1), WindowSampler(old, 16, 4, seed=2), 0.25)
    again.load_state_dict(json.loads(json.dumps(batches.state_dict())))
    for _ in range(6):
        assert torch.equal(batches.next_batch()[0], again.next_batch()[0])


def test_interrupted_continue_resumes_bit_for_bit(base, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from safetensors.torch import load_file

    import plinth.training.run as run
    from plinth.artifacts import resolve_checkpoint

    args = ["--replay", "0.5", "--run.eval_every", "3", "--run.ckpt_every", "3"]
    assert main(_args(base, tmp_path / "ref", 7, *args)) == 0
    real_step, calls = run.train_step, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # the run finishes the step, checkpoints and exits
        return real_step(*a, **k)

    monkeypatch.setattr(run, "train_step", interrupted)
    assert main(_args(base, tmp_path / "cut", 7, *args)) == 128 + signal.SIGTERM
    monkeypatch.setattr(run, "train_step", real_step)
    assert main(_args(base, tmp_path / "cut", 7, *args)) == 0
    ref, cut = (_metrics(tmp_path / d) for d in ("ref", "cut"))
    assert [r["loss"] for r in ref if "loss" in r] == [r["loss"] for r in cut if "loss" in r]
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_ref, s_cut = (json.loads((tmp_path / d / "summary.json").read_text())["forgetting"] for d in ("ref", "cut"))
    assert s_ref == s_cut


def _shards_of_another_tokenizer(base, root):
    from plinth.config import PrepareConfig, TokenizeConfig, TokenizerConfig
    from plinth.data.prepare import prepare
    from plinth.data.shards import write_shards
    from plinth.data.tokenizer import train_tokenizer

    prepare(PrepareConfig(inputs=[str(base["new"])], out=str(root / "p"), val_fraction=0.2, progress=False))
    train_tokenizer(TokenizerConfig(input=str(root / "p"), out=str(root / "tok.json"), kind="bpe", vocab_size=300))
    write_shards(TokenizeConfig(input=str(root / "p"), tokenizer=str(root / "tok.json"), out=str(root / "s"),
                                progress=False))
    return root / "s"


def test_replay_without_original_data_and_other_bad_input_are_one_line_errors(base, tiny_data, tmp_path, capsys):
    import plinth
    from plinth.artifacts import TOKENIZER, write_manifest
    from plinth.models.io import save_model

    folder = tmp_path / "plain"  # a model folder: no run, so no original data
    folder.mkdir()
    lm = plinth.load(base["run"], device="cpu")
    save_model(lm.model, folder)
    lm.tokenizer.save(folder / TOKENIZER)
    write_manifest(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    other = _shards_of_another_tokenizer(base, tmp_path / "other")
    cases = [
        (["finetune", "continue", str(folder), "--data", str(base["new"]), "--replay", "0.2"],
         "--replay 0.2 needs the original data"),
        (["finetune", "continue", str(base["run"]), "--data", str(tmp_path / "nowhere")],
         "no such built-in corpus (sotu, kjv), file or folder"),
        (["finetune", "continue", str(base["run"]), "--data", "builtin:nope"], "no such built-in corpus"),
        (["finetune", "continue", str(base["run"]), "--data", str(base["new"]), "--replay", "1"],
         "'replay' must be < 1"),
        (["finetune", "continue", str(base["run"])], "give the new domain with --data"),
        (["finetune", "continue", str(base["run"]), "--data", str(empty)], "no documents kept"),
        (["finetune", "continue", str(base["run"]), "--data", str(base["new"]), "--replay_data", str(other)],
         "written with another tokenizer than the model's"),
    ]
    for argv, needle in cases:
        out = tmp_path / "r"
        assert main([*argv, "--run.out_dir", str(out), "--no-run.progress"]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    # without replay, a model with no original data still continues; forgetting is then measured on the new domain
    out = tmp_path / "plain_run"
    assert main(["finetune", "continue", str(folder), "--data", str(base["new"]), "--run.out_dir", str(out),
                 "--run.max_steps", "2", "--no-run.progress", "--optim.batch_size", "4", "--system.device", "cpu",
                 "--system.compile", "off", "--val_fraction", "0.2"]) == 0
    assert "forgetting is not measured" in capsys.readouterr().err
    assert set(json.loads((out / "summary.json").read_text())["forgetting"]) == {"new"}


def test_continue_an_imported_hf_folder_with_replay_of_named_original_text(tmp_path, capsys):
    """An imported model has no run: the original domain is named with --replay_data (text, tokenized with the
    model's own tokenizer), and replay and forgetting work as for a Plinth run."""
    pytest.importorskip("transformers")
    from tests.conftest import make_corpus
    from tests.gguf_builders import train_tokenizer
    from tests.test_hf import make_hf_folder

    make_hf_folder(tmp_path / "hf", train_tokenizer("gpt2", vocab_size=300), "llama", {})
    out = tmp_path / "run"
    assert main(["finetune", "continue", str(tmp_path / "hf"), "--data", str(_new_domain(tmp_path / "new", 6)),
                 "--replay_data", str(make_corpus(tmp_path / "orig", docs=6)), "--replay", "0.5", "--seq_len", "32",
                 "--run.out_dir", str(out), "--run.max_steps", "2", "--no-run.progress", "--optim.batch_size", "2",
                 "--run.eval_batches", "2", "--val_fraction", "0.3", "--system.device", "cpu",
                 "--system.compile", "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["forgetting"]) == {"new", "original"} and summary["seq_len"] == 32
    assert (out / "data" / "original" / "shards" / "train" / "manifest.json").is_file()


@pytest.mark.slow
def test_continue_smollm2_on_the_bible_with_replay_of_the_speeches(tmp_path, capsys):
    """The real imported SmolLM2-135M, a few steps on the built-in `kjv` with a quarter replayed from `sotu`."""
    from plinth.common import PlinthError
    from plinth.pipelines.convert import builtin_model_file

    try:
        builtin_model_file("smollm2-135m-instruct")
    except PlinthError as e:
        pytest.skip(str(e))
    out = tmp_path / "run"
    assert main(["finetune", "continue", "builtin:smollm2-135m-instruct", "--data", "kjv", "--replay_data", "sotu",
                 "--replay", "0.25", "--max_docs", "4", "--seq_len", "128", "--run.out_dir", str(out),
                 "--run.max_steps", "4", "--run.eval_every", "0", "--no-run.progress", "--optim.batch_size", "2",
                 "--optim.lr", "1e-4", "--optim.warmup_steps", "1", "--run.eval_batches", "2", "--val_fraction",
                 "0.25", "--system.device", "cpu", "--system.compile", "off"]) == 0
    table = json.loads((out / "summary.json").read_text())["forgetting"]
    assert set(table) == {"new", "original"}  # 4 steps are too few to promise a direction on a 135 M model
    assert all(0 < row[k] < 5 for row in table.values() for k in ("before_loss", "after_loss", "before_bpb"))


def test_lora_continue_trains_adapters_only_and_saves_the_adapter_alone(base, tmp_path, capsys):
    """--lora.rank: the base weights in the checkpoint are the original ones bit for bit, the adapter is written
    alone and, loaded onto the base, gives the run's final model's logits."""
    pytest.importorskip("peft")
    import plinth
    from plinth.artifacts import resolve_checkpoint

    out = tmp_path / "lora"
    assert main(_args(base, out, 6, "--lora.rank", "4", "--lora.alpha", "8", "--lora.targets", "q_proj,v_proj")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_parameters"] > 0 and summary["adapter_bytes"] > 0
    assert summary["forgetting"]["new"]["after_loss"] < summary["forgetting"]["new"]["before_loss"]
    original = plinth.load(base["run"], device="cpu").model.state_dict()
    trained = plinth.load(out, device="cpu").model  # the last checkpoint: base + adapter layers
    for name, tensor in trained.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, original[name.replace(".base_layer", "")]), name
    assert resolve_checkpoint(out).is_dir()
    with_adapter = plinth.load(base["run"], device="cpu", adapter=out / "adapter").model
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids), trained(ids), atol=1e-5)
        assert not torch.allclose(with_adapter(ids), plinth.load(base["run"], device="cpu").model(ids), atol=1e-4)
