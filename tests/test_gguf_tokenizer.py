"""GGUF tokenizer metadata -> tokenizers JSON, against transformers' GGUF tokenizer, and back."""

import json

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from plinth.common import PlinthError
from plinth.data.gguf_tokenizer import byte_alphabet, gguf_tokenizer_metadata, merges_from_scores
from plinth.data.gguf_tokenizer import tokenizer_json_from_gguf as _from_gguf
from plinth.models.gguf import special_token_ids
from tests.gguf_builders import TEXTS, tiny_spec, train_sentencepiece, train_tokenizer, write_tiny_gguf
from tests.gguf_builders import read as read_gguf
from tests.gguf_builders import write as write_gguf


def tokenizer_json_from_gguf(meta, path):
    return _from_gguf(meta, path, special_token_ids(meta, path))


def _theirs(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2"])
def test_same_ids_as_transformers(tmp_path, pre, add_bos):
    tokenizer = train_tokenizer(pre, user_defined=("<think>", "</think>"))
    path = tmp_path / "t.gguf"
    write_tiny_gguf(
        path, tiny_spec(), tokenizer, pre=pre, extra_meta=lambda w: w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    )
    ours = Tokenizer.from_str(read_gguf(path).tokenizer_json)
    theirs = _theirs(path)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids), text
    assert (ours.encode(TEXTS[0]).ids[0] == tokenizer.token_to_id("<|im_start|>")) == add_bos
    # control tokens stay whole, user-defined ones too, and the trained pieces are what the source gives
    assert ours.encode("<|im_start|><think>").ids[-2:] == [
        tokenizer.token_to_id("<|im_start|>"),
        tokenizer.token_to_id("<think>"),
    ]
    plain = [ours.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert plain == [tokenizer.encode(t).ids for t in TEXTS]


def test_byte_alphabet_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_alphabet() == bytes_to_unicode()


def _meta(tokenizer, **extra):
    spec = json.loads(tokenizer.to_str())
    tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [" ".join(m) for m in spec["model"]["merges"]],
    }
    return {**meta, **extra}


def test_unsupported_tokenizers_are_refused():
    tokenizer = train_tokenizer("gpt2")
    with pytest.raises(PlinthError, match="f.gguf: tokenizer.ggml.pre 'made-up'"):
        tokenizer_json_from_gguf(_meta(tokenizer, **{"tokenizer.ggml.pre": "made-up"}), "f.gguf")
    with pytest.raises(PlinthError, match="tokenizer.ggml.model 't5' is not supported"):
        tokenizer_json_from_gguf({"tokenizer.ggml.model": "t5"}, "f.gguf")
    with pytest.raises(PlinthError, match="lacks tokenizer.ggml.scores"):
        tokenizer_json_from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"]}, "f.gguf")
    with pytest.raises(PlinthError, match="bos_token_id"):
        tokenizer_json_from_gguf(_meta(tokenizer, **{"tokenizer.ggml.bos_token_id": 10**6}), "f.gguf")
    assert tokenizer_json_from_gguf({}, "f.gguf") is None


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2"])
def test_pre_name_is_inferred_from_the_tokenizer(pre):
    meta = gguf_tokenizer_metadata(train_tokenizer(pre).to_str(), 1000, {"bos": 1, "eos": 2})
    assert meta["tokenizer.ggml.pre"] == pre


def test_smollm_style_pre_tokenizer_is_named_smollm():
    tokenizer = train_tokenizer("gpt2")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert gguf_tokenizer_metadata(tokenizer.to_str(), 1000, {})["tokenizer.ggml.pre"] == "smollm"


def test_non_byte_level_tokenizers_cannot_be_written():
    tokenizer = train_tokenizer("gpt2")
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(PlinthError, match="pre-tokenizer"):
        gguf_tokenizer_metadata(tokenizer.to_str(), 1000, {})
    spec = json.loads(tokenizer.to_str())
    spec["decoder"] = None
    with pytest.raises(PlinthError, match="byte-level BPE"):
        gguf_tokenizer_metadata(json.dumps(spec), 1000, {})


def test_written_tokenizer_reads_back_and_loads_in_transformers(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer("llama-bpe", user_defined=("<think>",))
    n = tokenizer.get_vocab_size()
    # a padded embedding (vocab_size > tokens), as trained models often have
    config = LlamaConfig(
        vocab_size=n + 5,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=[2, 0],
    )
    model = LlamaForCausalLM(config)
    (tmp_path / "g").mkdir()
    path = write_gguf(tmp_path / "g" / "m.gguf", config.to_dict(), model.state_dict(), tokenizer.to_str())
    back = read_gguf(path)
    meta = back.metadata
    assert meta["tokenizer.ggml.tokens"][n:] == [f"[PAD{i}]" for i in range(n, n + 5)]
    assert meta["tokenizer.ggml.token_type"][n:] == [5] * 5
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.pre"] == "llama-bpe"
    ours = Tokenizer.from_str(back.tokenizer_json)
    theirs = _theirs(path)
    for text in TEXTS:
        assert ours.encode(text).ids == tokenizer.encode(text).ids == theirs(text)["input_ids"], text


def test_special_token_ids_are_matched_whole_whatever_their_type(tmp_path):
    # an older-style file: every token NORMAL, so only bos/eos/unk/pad (and "<|endoftext|>") become special
    tokenizer = train_tokenizer("gpt2")
    path = tmp_path / "t.gguf"

    def all_normal(writer):
        n = tokenizer.get_vocab_size()
        writer.add_array("tokenizer.ggml.token_type", [1] * n)
        writer.add_uint32("tokenizer.ggml.unknown_token_id", tokenizer.token_to_id("a"))

    write_tiny_gguf(path, tiny_spec(), tokenizer, extra_meta=all_normal)
    ours = Tokenizer.from_str(read_gguf(path).tokenizer_json)
    theirs = _theirs(path)
    for text in TEXTS + ["banana<|im_end|>apple<|endoftext|>"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text


@pytest.fixture(scope="module")
def sentencepiece_vocab():
    pytest.importorskip("sentencepiece")
    return train_sentencepiece()


@pytest.mark.parametrize("add_bos", [None, False])
def test_sentencepiece_same_ids_as_transformers(tmp_path, sentencepiece_vocab, add_bos):
    path = tmp_path / "spm.gguf"
    extra = None if add_bos is None else (lambda w: w.add_bool("tokenizer.ggml.add_bos_token", add_bos))
    write_tiny_gguf(path, tiny_spec(), sentencepiece=sentencepiece_vocab, extra_meta=extra)
    model = read_gguf(path)
    ours = Tokenizer.from_str(model.tokenizer_json)
    theirs = _theirs(path)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids), text
    assert (ours.encode("hi").ids[0] == 1) == (add_bos is None)  # BOS by default for SentencePiece
    assert (model.bos_token, model.eos_token) == ("<s>", "</s>")


def test_merges_from_scores_matches_transformers(sentencepiece_vocab):
    from transformers.tokenization_utils_base import generate_merges

    tokens, scores, _ = sentencepiece_vocab
    vocab = {t: i for i, t in enumerate(tokens)}
    assert merges_from_scores(tokens, scores) == generate_merges(vocab, dict(zip(tokens, scores)))


def test_sentencepiece_tokenizers_are_not_written(tmp_path, sentencepiece_vocab):
    path = tmp_path / "spm.gguf"
    write_tiny_gguf(path, tiny_spec(), sentencepiece=sentencepiece_vocab)
    model = read_gguf(path)
    with pytest.raises(PlinthError, match="not byte-level BPE"):
        write_gguf(tmp_path / "out.gguf", model.hf_config, model.tensors, model.tokenizer_json)
    back = read_gguf(write_gguf(tmp_path / "out.gguf", model.hf_config, model.tensors, None))
    assert back.tokenizer_json is None
