"""Supervised fine-tuning: row shapes, the assistant mask and its shift edge on the gradient, packing without
cross-example attention, token-weighted accumulation, the CLI end to end (resume, early stopping, samples), bad
input."""

import json

import pytest
import torch

from plinth.cli.main import main
from plinth.data.sft import PLAIN_TEMPLATE, load_sft_data, render_example, row_messages
from plinth.models import GPT, preset
from plinth.training.sft import IGNORE_INDEX, SFTBatches, collate, sft_loss
from tests.lm_builders import CHATML, char_tokenizer, save_lm

torch.set_num_threads(1)

ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
    {"prompt": "2+2?", "response": "four", "system": "math"},
    {"instruction": "Translate", "input": "chat", "output": "cat"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": "ab"}]},
]


def test_row_shapes_become_messages_and_bad_rows_say_why():
    assert row_messages(ROWS[1]) == [{"role": "system", "content": "math"}, {"role": "user", "content": "2+2?"},
                                     {"role": "assistant", "content": "four"}]
    assert row_messages(ROWS[2])[0]["content"] == "Translate\n\nchat"
    assert row_messages(ROWS[3])[0]["content"] == "ab"
    assert row_messages({"messages": [{"role": "user", "content": "x"}]}) == "no assistant turn"
    assert row_messages({"prompt": "x", "response": 3}) == "prompt/response are not both strings"
    assert row_messages({"text": "x"}) == "no messages, prompt or instruction field"
    assert row_messages([1]) == "not a JSON object"


def _example(messages, template=CHATML):
    tok = char_tokenizer()
    return tok, render_example(messages, template, tok, "<|im_start|>", "<|im_end|>")


def test_only_assistant_turns_are_trained_end_of_turn_included():
    tok, ex = _example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                        {"role": "user", "content": "ok"}, {"role": "assistant", "content": "go"}])
    trained = tok.decode([t for t, keep in zip(ex.ids, ex.trained) if keep])
    assert trained == "yo<|im_end|>go<|im_end|>"
    _, plain = _example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], PLAIN_TEMPLATE)
    assert tok.decode([t for t, k in zip(plain.ids, plain.trained) if k]) == " yo<|im_end|>"


def test_prompt_tokens_get_zero_gradient_and_the_first_response_token_is_trained():
    """The shift edge: the target at the last prompt position is the first response token (trained); the target
    at the position before it is the last prompt token (not trained). Checked on the gradient of the logits."""
    tok, ex = _example([{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}])
    first = ex.trained.index(True)  # index of the first response token in the sequence
    assert tok.decode([ex.ids[first]]) == "a" and not ex.trained[first - 1]
    torch.manual_seed(0)
    model = GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2))
    x, y, seg = collate([ex], pad_id=0)
    captured = {}

    def wrapped(ids, segment_ids=None, logits_at=None):  # the full logits, kept to read their gradient
        captured["logits"] = model(ids)
        captured["logits"].retain_grad()
        return captured["logits"] if logits_at is None else captured["logits"][logits_at]

    loss, count, _ = sft_loss(wrapped, (x, y, seg))
    loss.backward()
    grad = captured["logits"].grad[0].abs().sum(-1)  # (T,): gradient reaching each position's logits
    assert int(count) == sum(ex.trained[1:]) == len("answer<|im_end|>") - len("<|im_end|>") + 1
    assert grad[first - 1] > 0, "the first response token (predicted at the last prompt position) is trained"
    assert grad[first - 2] == 0, "the last prompt token (predicted at the position before) is not trained"
    n = int(count)  # "answer<|im_end|>" is trained; the newline the template writes after it is not
    assert torch.all(grad[: first - 1] == 0) and torch.all(grad[first - 1: first - 1 + n] > 0)
    assert torch.all(grad[first - 1 + n:] == 0)
    assert y[0, first - 1] == ex.ids[first] and y[0, first - 2] == IGNORE_INDEX
    # the model's own selection gives the same logits and loss as masking the full (B, T, vocab) tensor
    scored = y != IGNORE_INDEX
    assert torch.allclose(model(x, logits_at=scored), model(x)[scored], atol=1e-6)
    full = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                             reduction="sum")
    assert torch.allclose(sft_loss(model, (x, y, seg))[0], full, rtol=1e-6)


def test_packed_examples_do_not_see_each_other():
    tok = char_tokenizer()
    exs = [render_example(row_messages(r), CHATML, tok, None, None) for r in ROWS[:3]]
    torch.manual_seed(0)
    model = GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2, seq_len=128)).eval()
    x, y, seg = collate(exs, pad_id=0, packed_len=128)
    assert x.shape == (1, 128) and seg[0].unique().numel() == 4  # three examples and the padding
    with torch.no_grad():
        packed = model(x, segment_ids=seg)[0]
        start = 0
        for ex in exs:
            alone = model(torch.tensor([ex.ids[:-1]]))[0]
            assert torch.allclose(packed[start:start + len(ex.ids) - 1], alone, atol=1e-5)
            start += len(ex.ids) - 1
        loss_packed, n_packed, _ = sft_loss(model, (x, y, seg))
        loss_alone = sum(sft_loss(model, collate([e], 0))[0] for e in exs)
    assert n_packed == sum(e.n_trained for e in exs)
    assert torch.allclose(loss_packed, loss_alone, rtol=1e-5)


def test_gradient_is_averaged_over_tokens_across_micro_batches():
    """One micro-batch of two examples or two micro-batches of one: the same update (a mean over assistant tokens,
    not a mean of per-batch means), although the examples train 2 and 9 tokens."""
    from plinth.training.run import Objective, train_step

    tok = char_tokenizer()
    a = render_example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], CHATML, tok, None,
                       None)
    b = render_example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "longer one"}], CHATML,
                       tok, None, None)
    assert (a.n_trained, b.n_trained) == (2, 11)

    class Grab:  # an "optimizer" that keeps the gradient the step hands it
        def __init__(self, params):
            self.params = list(params)

        def step(self):
            self.grad = torch.cat([p.grad.flatten() for p in self.params])

        def zero_grad(self, set_to_none=True):
            for p in self.params:
                p.grad = None

    def step(batch_size, accum):
        torch.manual_seed(0)
        model = GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2))
        opt = Grab(model.parameters())
        batches = SFTBatches([a, b], batch_size, seed=0, pad_id=0)
        batches._order = torch.tensor([0, 1]).numpy()
        train_step(model, model, opt, Objective("sft", sft_loss, batches), accum, torch.device("cpu"), "fp32", 0.0)
        return opt.grad

    assert torch.allclose(step(2, 1), step(1, 2), atol=1e-6)


def test_packed_batches_fill_rows_and_resume_where_they_stopped():
    tok = char_tokenizer()
    exs = [render_example(row_messages(r), CHATML, tok, None, None) for r in ROWS] * 3
    src = SFTBatches(exs, batch_size=2, seed=1, pad_id=0, packed_len=96)
    first = [src.next_batch() for _ in range(3)]
    assert all(b[0].shape == (2, 96) for b in first)
    state = src.state_dict()
    want = src.next_batch()
    again = SFTBatches(exs, batch_size=2, seed=1, pad_id=0, packed_len=96)
    again.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(again.next_batch(), want))


# ----------------------------------------------------------------------------------------------------------------------
# The verb, end to end, on a tiny Plinth model folder with a ChatML template


def _tiny_model(folder, seed=0):
    from plinth.pipelines.text import LanguageModel, TextSettings

    torch.manual_seed(seed)
    tok = char_tokenizer()
    model = GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2, seq_len=96))
    settings = TextSettings(bos_token="<|im_start|>", eos_token="<|im_end|>", bos_token_id=1, eos_token_ids=[2],
                            chat_template=CHATML)
    return save_lm(LanguageModel(model, tok, None, settings), folder)


def _qa_rows(n, answer=lambda i: f"n{i % 7}"):
    return [{"prompt": f"say {i % 7}", "response": answer(i)} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return {"model": _tiny_model(root / "base"), "data": _write(root / "train.jsonl", _qa_rows(40)),
            "root": root}


def _args(tiny, out, steps=6, *extra):
    return ["finetune", "sft", str(tiny["model"]), "--data", str(tiny["data"]), "--run.out_dir", str(out),
            "--run.max_steps", str(steps), "--run.eval_every", "3", "--run.ckpt_every", "3", "--no-run.progress",
            "--optim.batch_size", "4", "--optim.lr", "3e-3", "--optim.warmup_steps", "1", "--system.device", "cpu",
            "--system.precision", "fp32", "--system.compile", "off", "--samples", "2", "--sample_tokens", "6",
            *extra]


def test_sft_cli_trains_reports_and_the_result_chats(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny, out, 12, "--optim.lr", "1e-2", "--packing")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["train_examples"] + summary["val_examples"] == 40 and summary["val_examples"] >= 1
    assert summary["val_loss"] < summary["before_val_loss"]  # the held-out answers became more likely
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 3, 6, 9, 12} and all("reply" in s for s in samples)
    import plinth

    lm = plinth.load(out, device="cpu")  # the newest checkpoint is a model folder with the chat template
    assert lm.settings.chat_template == CHATML
    assert isinstance(lm.chat([{"role": "user", "content": "say 1"}], max_new_tokens=4, temperature=0), str)


def test_interrupted_sft_run_resumes_bit_for_bit(tiny, tmp_path, capsys, monkeypatch):
    """SIGTERM arrives during step 4 of 7 (LoRA, with dropout drawing random numbers, and packing); the run
    checkpoints and exits 143; rerun, it resumes: the same losses and final weights as one uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file

    import plinth.training.run as run
    from plinth.artifacts import resolve_checkpoint

    pytest.importorskip("peft")
    args = ["--lora.rank", "4", "--lora.dropout", "0.1", "--run.log_every", "1", "--packing", "--samples", "0"]
    assert main(_args(tiny, tmp_path / "ref", 7, *args)) == 0
    real_step, calls = run.train_step, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run: it finishes the step and checkpoints
        return real_step(*a, **k)

    monkeypatch.setattr(run, "train_step", interrupted)
    assert main(_args(tiny, tmp_path / "cut", 7, *args)) == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"] == 4
    monkeypatch.setattr(run, "train_step", real_step)
    assert main(_args(tiny, tmp_path / "cut", 7, *args)) == 0

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    assert losses(tmp_path / "ref") == losses(tmp_path / "cut")
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_when_heldout_loss_stops_improving(tiny, tmp_path, capsys):
    """Held-out answers contradict the training ones, so the held-out loss rises from the first evaluation on."""
    val = _write(tmp_path / "val.jsonl", _qa_rows(8, answer=lambda i: f"m{(i + 3) % 7}"))
    out = tmp_path / "early"
    assert main(_args(tiny, out, 40, "--val_data", str(val), "--patience", "2", "--run.eval_every", "2",
                      "--optim.lr", "2e-2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"].startswith("stopped early") and summary["steps"] < 40
    assert main(_args(tiny, out, 40, "--val_data", str(val), "--patience", "2", "--run.eval_every", "2",
                      "--optim.lr", "2e-2")) == 0  # a rerun stops at once: the decision is in the checkpoint
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"]


def test_sft_on_an_imported_hf_llama_folder(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.gguf_builders import train_tokenizer
    from tests.test_hf import make_hf_folder

    tok = train_tokenizer("gpt2", vocab_size=300)
    make_hf_folder(tmp_path / "hf", tok, "llama", {})
    data = _write(tmp_path / "d.jsonl", _qa_rows(12))
    out = tmp_path / "run"
    assert main(["finetune", "sft", str(tmp_path / "hf"), "--data", str(data), "--run.out_dir", str(out),
                 "--run.max_steps", "2", "--no-run.progress", "--optim.batch_size", "2", "--system.device", "cpu",
                 "--system.compile", "off", "--samples", "1", "--sample_tokens", "4"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "x"}]}] * 3, "no usable training conversations (3 x no assistant"),
    ([{"text": "plain"}], "no messages, prompt or instruction field"),
])
def test_unusable_data_is_a_one_line_error(tiny, tmp_path, capsys, rows, message):
    bad = _write(tmp_path / "bad.jsonl", rows)
    assert main(["finetune", "sft", str(tiny["model"]), "--data", str(bad), "--run.out_dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bad_rows_are_counted_and_skipped(tmp_path):
    tok = char_tokenizer()
    path = _write(tmp_path / "mixed.jsonl", [*ROWS, {"messages": [{"role": "user", "content": "x"}]}, {"x": 1}])
    data = load_sft_data(path, CHATML, tok, 64, None, None, val_fraction=0.0)
    assert len(data.train) == 4 and data.skipped == {"no assistant turn": 1,
                                                     "no messages, prompt or instruction field": 1}
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    with pytest.raises(Exception, match="broken.jsonl:2: not valid JSON"):
        load_sft_data(tmp_path / "broken.jsonl", CHATML, tok, 64, None, None)


def test_a_model_without_chat_template_gets_plain_turns_saved_with_the_result(tmp_path, capsys):
    """A model Plinth pretrained has no chat template: SFT uses plain User:/Assistant: turns ending at the
    end-of-document token, and the fine-tuned checkpoint carries that template, so `chat` works on it."""
    import plinth
    from plinth.artifacts import TOKENIZER, write_manifest
    from plinth.models.io import save_model

    torch.manual_seed(0)
    tok = char_tokenizer()
    folder = tmp_path / "plain"
    folder.mkdir()
    save_model(GPT(preset("test", vocab_size=tok.vocab_size, d_model=32, n_head=2, n_kv_head=2)), folder)
    tok.save(folder / TOKENIZER)
    write_manifest(folder)
    data = _write(tmp_path / "d.jsonl", _qa_rows(10))
    out = tmp_path / "run"
    assert main(["finetune", "sft", str(folder), "--data", str(data), "--run.out_dir", str(out), "--run.max_steps",
                 "2", "--no-run.progress", "--optim.batch_size", "2", "--system.device", "cpu", "--system.compile",
                 "off", "--samples", "0"]) == 0
    assert "no chat template: using plain 'User:/Assistant:' turns" in capsys.readouterr().err
    lm = plinth.load(out, device="cpu")
    assert lm.settings.chat_template == PLAIN_TEMPLATE and lm.settings.eos_token == "<|endoftext|>"
    assert lm.chat_prompt([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"


def test_lora_target_matching_nothing_fails_before_writing(tiny, tmp_path, capsys):
    pytest.importorskip("peft")
    assert main(_args(tiny, tmp_path / "r", 2, "--lora.rank", "4", "--lora.targets", "qkv_proj")) == 2
    err = capsys.readouterr().err
    assert "lora targets qkv_proj match no layer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
