"""CLIP's loss and training: symmetric InfoNCE against transformers' formula, gradient caching equal to the full
batch, retrieval recall@k, caption metrics, zero-shot ensembling, and kill-and-resume of a contrastive run."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plinth.models import build_model, preset
from plinth.multimodal.contrastive import caption_groups, contrastive_loss
from plinth.multimodal.retrieval import recall_at_k
from plinth.training.contrastive import contrastive_loss_fn


def test_contrastive_loss_matches_transformers_clip_loss():
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(14.3)
    ours, metrics = contrastive_loss(img, txt, scale)
    theirs = clip_loss(scale * txt @ img.T)  # HF passes logits_per_text
    assert torch.allclose(ours / 6, theirs, atol=1e-6)
    assert 0.0 <= metrics["i2t_acc"] <= 1.0


def test_repeated_captions_are_positives():
    img = F.normalize(torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]), dim=-1)  # rows 0 and 1: the same caption
    groups = caption_groups(["a cat", "a cat", "a dog"])
    assert groups.tolist() == [0, 0, 1]
    txt.requires_grad_()
    loss, m = contrastive_loss(img, txt, torch.tensor(50.0), groups)
    assert m["i2t_acc"] == 1.0 and m["t2i_acc"] == 1.0
    (grouped,) = torch.autograd.grad(loss, txt)
    plain, _ = contrastive_loss(img, txt, torch.tensor(50.0))
    (one_hot,) = torch.autograd.grad(plain, txt)
    # Identical captions cannot be told apart: with them as positives the loss is at its optimum; one-hot targets
    # would keep pushing the two copies of one caption apart.
    assert grouped.abs().max() < 1e-3 < one_hot.abs().max()


def _batch(B=8, T=6, vocab=300):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[::2, 4:] = False
    return {"pixels": torch.randn(B, 3, 16, 16, generator=g), "input_ids": ids, "attention_mask": mask,
            "groups": torch.arange(B)}


def test_gradient_caching_equals_the_full_batch_gradient():
    torch.manual_seed(0)
    model = build_model(preset("clip-test"))
    batch = _batch()
    grads = []
    for chunks in (1, 4):
        model.zero_grad()
        loss, n, m = contrastive_loss_fn(chunks)(model, batch)
        loss.backward()
        assert n == 8
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    full, cached = grads
    assert full.keys() == cached.keys() and "logit_scale" in full
    for k in full:
        assert torch.allclose(full[k], cached[k], atol=1e-5, rtol=1e-4), k


def test_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.8], [0.5, 0.4, 0.1]])
    r = recall_at_k(sim, [{0}, {1}, {2}], ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    assert recall_at_k(sim, [{0}, {1, 2}, {1}], ks=(1,))["R@1"] == pytest.approx(2 / 3)


def test_caption_metrics():
    pytest.importorskip("sacrebleu")
    from plinth.evaluate.caption_metrics import answer_accuracy, bleu4, cider_d

    refs = [["a red circle", "one red circle"], ["two blue squares", "a pair of blue squares"],
            ["three green crosses", "green crosses"]]
    perfect = [r[0] for r in refs]
    long_refs = [[f"there is {r} on a grey background" for r in rs] for rs in refs]
    assert bleu4([r[0] for r in long_refs], long_refs) == pytest.approx(100.0)
    assert bleu4(["a cat sat on the mat", "a dog", "the end"], long_refs) < 10
    assert cider_d(perfect, refs) > cider_d(["a blue circle", "two red squares", "green crosses"], refs) > 0
    # Pinned against pycocoevalcap 1.2's Cider().compute_score on the same (already tokenized) strings.
    assert cider_d(["a red circle", "two blue squares", "green crosses"], refs) == pytest.approx(CIDER_GOLDEN,
                                                                                                abs=1e-6)
    assert answer_accuracy(["Two.", "the red", "blue"], ["two", "red", "green"]) == 2 / 3


CIDER_GOLDEN = 4.860064122352784  # pycocoevalcap 1.2 gives 4.860064122352784


def test_zero_shot_ensembles_templates():
    from plinth.multimodal.zeroshot import ZeroShotClassifier

    class Fake:
        logit_scale = 10.0

        def encode_texts(self, texts):
            return F.normalize(torch.tensor([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts]), dim=-1)

        def encode_images(self, images):
            return F.normalize(torch.tensor(images, dtype=torch.float), dim=-1)

    zs = ZeroShotClassifier(Fake(), ["cat", "dog"], ["a {}", "the {}"])
    probs = zs.classify([[0.9, 0.1], [0.0, 1.0]])
    assert probs.argmax(1).tolist() == [0, 1] and zs.accuracy(probs, [0, 1]) == 1.0
    with pytest.raises(Exception, match="exactly one"):
        ZeroShotClassifier(Fake(), ["cat"], ["no placeholder"])


# ----------------------------------------------------------------------------------------------------------------------
# Kill and resume a contrastive run (gradient-cached, two chunks), bitwise against an uninterrupted one


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    from plinth.config import ImagesPrepareConfig
    from plinth.data.image_prep import prepare_images

    out = tmp_path_factory.mktemp("shapes") / "set"
    prepare_images(ImagesPrepareConfig(inputs=["builtin:shapes"], out=str(out), size=20, max_images=240,
                                       holdout_classes=["red circle", "green square"], progress=False))
    return out


def _clip_cli(images: Path, out: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "plinth.cli.main", "clip", "train", "--model", "clip-test", "--data.images",
            str(images), "--vocab_size", "300", "--optim.batch_size", "8", "--optim.grad_accum", "2",
            "--optim.warmup_steps", "2", "--run.out_dir", str(out), "--run.max_steps", str(steps),
            "--run.ckpt_every", "3", "--run.eval_every", "0", "--run.log_every", "1", "--no-run.progress",
            "--system.precision", "fp32", "--system.compile", "off", "--system.device", "cpu",
            "--data.eval_images", "16"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _wait_for(run: Path, step: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        m = run / "metrics.jsonl"
        if m.exists() and any(json.loads(x).get("step", 0) >= step for x in m.read_text().splitlines()[-3:]
                              if x.endswith("}")):
            return
        time.sleep(0.005)


def test_contrastive_run_killed_and_resumed_matches_uninterrupted(shapes_set, tmp_path):
    from safetensors.torch import load_file

    from plinth.artifacts import resolve_checkpoint

    steps = 24
    ref = _clip_cli(shapes_set, tmp_path / "ref", steps)
    assert ref.wait(600) == 0, ref.stderr.read().decode()[-2000:]
    rng = random.Random(7)
    kills = 0
    for target in sorted(rng.sample(range(4, steps - 4), 2)):
        proc = _clip_cli(shapes_set, tmp_path / "killed", steps)
        _wait_for(tmp_path / "killed", target, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(600)
    assert kills >= 1, "the run finished before it could be killed"
    final = _clip_cli(shapes_set, tmp_path / "killed", steps)
    assert final.wait(600) == 0, final.stderr.read().decode()[-2000:]
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "ref")
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "killed") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------------------
# The three image objectives on the shared run: chance-level loss at the start, learning (captioner), and a seed that
# fixes the whole run (init, data order, augmentation). Compared within this process, never against pinned floats.


def _run_steps(kind: str, images: Path, out: Path, steps: int = 8) -> tuple[list[float], int]:
    """Per-step training losses of a tiny run of `kind`, and K, the number of choices at each prediction (batch size
    for InfoNCE, classes for the classifier, vocabulary for the captioner), so that ln K is the loss at chance."""
    from plinth import config as C
    from plinth.data.image_prep import ImageSet
    from plinth.training.caption import train_captioner
    from plinth.training.classify import train_classifier
    from plinth.training.contrastive import train_clip

    common = dict(data=C.ImageDataConfig(images=str(images), eval_images=16),
                  optim=C.OptimConfig(lr=3e-3, batch_size=8, warmup_steps=1),
                  run=C.RunConfig(out_dir=str(out), max_steps=steps, ckpt_every=0, eval_every=0, log_every=1,
                                  progress=False),
                  system=C.SystemConfig(device="cpu", precision="fp32", compile="off", seed=5))
    if kind == "clip":
        train_clip(C.ClipTrainConfig(model="clip-test", vocab_size=300, **common))
        k = 8
    elif kind == "classifier":
        train_classifier(C.ClassifierTrainConfig(model="vit-test", **common))
        k = len(ImageSet(images).seen_classes)
    else:
        train_captioner(C.CaptionerTrainConfig(model="captioner-test", vocab_size=300, **common))
        k = _vocab(out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], k


def _vocab(run: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(run / "tokenizer.json")).get_vocab_size()


@pytest.mark.parametrize("kind", ["clip", "classifier", "captioner"])
def test_image_objectives_start_at_chance_learn_and_repeat(shapes_set, tmp_path, kind):
    losses, k = _run_steps(kind, shapes_set, tmp_path / "a")
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    # A mean over counted targets at init is ~ln K; a sum, or a wrong count, would be off by a factor.
    assert abs(losses[0] - math.log(k)) < 0.35 * math.log(k), (losses[0], math.log(k))
    if kind == "captioner":  # token frequencies are learnt in a few steps; 8-image InfoNCE and a 30-way 16-pixel
        assert max(losses[-3:]) < losses[0] - 0.1, losses  # classifier barely move in 8 (their verbs' tests train)
    again, _ = _run_steps(kind, shapes_set, tmp_path / "b")
    assert again == losses
