"""read_gguf / write_gguf on tiny files written in the test, with transformers' GGUF loader as the reference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file
from tokenizers import Tokenizer

from plinth.common import PlinthError
from plinth.models.gguf import llama3_rope_factors, permute_rope_rows, unpermute_rope_rows
from plinth.models.layers import rope_inv_freq
from tests.gguf_builders import (
    TEXTS,
    gguf_vocab,
    llama_cpp_permute,
    tiny_spec,
    train_tokenizer,
    write_tiny_gguf,
)
from tests.gguf_builders import read as read_gguf
from tests.gguf_builders import write as write_gguf

MIXED = {
    "attn_q": Q.Q8_0,
    "attn_k": Q.Q4_0,
    "attn_v": Q.Q4_1,
    "attn_output": Q.Q5_0,
    "ffn_gate": Q.Q5_1,
    "ffn_up": Q.F16,
    "ffn_down": Q.BF16,
    "token_embd": Q.Q8_0,
    "output": Q.F32,
}


def mixed_types(name: str) -> Q:
    return MIXED[name.split(".")[-2]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer("gpt2", user_defined=("<think>", "</think>"))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), name


def hf_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------------------------------------
# reading files laid out as llama.cpp writes them


def test_permutation_helpers_match_llama_cpp():
    w = torch.randn(2 * 16, 8)
    assert torch.equal(permute_rope_rows(w, 2), torch.from_numpy(llama_cpp_permute(w.numpy(), 2)))
    assert torch.equal(unpermute_rope_rows(permute_rope_rows(w, 2), 2), w)
    # the grouped-query pitfall: undoing k's permutation with the q head count scrambles it
    assert not torch.equal(unpermute_rope_rows(permute_rope_rows(w, 2), 4), w)


def test_read_f32_gqa_gives_source_tensors_exactly(tmp_path, tokenizer):
    path = tmp_path / "tiny.gguf"
    source, _ = write_tiny_gguf(path, tiny_spec(tied=False), tokenizer)
    model = read_gguf(path)
    assert_same_tensors(model.tensors, {k: torch.from_numpy(v) for k, v in source.items()})
    cfg = model.hf_config
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["tie_word_embeddings"] is False and cfg["vocab_size"] == len(gguf_vocab(tokenizer)[0])
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 10000.0 and "rope_scaling" not in cfg
    assert (model.bos_token, model.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON values, ready for a config.json


def test_read_mixed_quantized_types(tmp_path, tokenizer):
    path = tmp_path / "mixed.gguf"
    _, expected = write_tiny_gguf(path, tiny_spec(tied=False), tokenizer, mixed_types)
    model = read_gguf(path)
    assert_same_tensors(model.tensors, {k: torch.from_numpy(v) for k, v in expected.items()})
    assert model.tensor_types["model.layers.0.self_attn.k_proj.weight"] == "Q4_0"
    assert model.tensor_types["model.layers.1.mlp.down_proj.weight"] == "BF16"


def test_read_k_quants(tmp_path, tokenizer):
    # K-quant blocks are 256 wide, so every row here is 256 long; gguf cannot quantize them, so the file
    # holds random blocks and the expectation is their (separately verified) dequantization
    types = {
        "attn_q": Q.Q4_K,
        "attn_k": Q.Q5_K,
        "attn_v": Q.Q6_K,
        "attn_output": Q.Q4_K,
        "ffn_gate": Q.Q5_K,
        "ffn_up": Q.Q6_K,
        "ffn_down": Q.Q4_K,
        "token_embd": Q.Q6_K,
    }
    spec = tiny_spec(n_layer=1, d_model=256, d_ff=256, n_head=4, n_kv_head=2)
    path = tmp_path / "kquant.gguf"
    _, expected = write_tiny_gguf(path, spec, tokenizer, lambda n: types[n.split(".")[-2]])
    model = read_gguf(path)
    assert_same_tensors(model.tensors, {k: torch.from_numpy(v) for k, v in expected.items()})
    assert {model.tensor_types[n] for n in model.tensors if "layers.0.self" in n} == {"Q4_K", "Q5_K", "Q6_K"}


def test_read_qwen2_keeps_rows_and_biases(tmp_path, tokenizer):
    path = tmp_path / "qwen2.gguf"
    source, _ = write_tiny_gguf(path, tiny_spec(arch="qwen2", qkv_bias=True), tokenizer, pre="qwen2")
    model = read_gguf(path)
    assert_same_tensors(model.tensors, {k: torch.from_numpy(v) for k, v in source.items()})
    assert model.hf_config["model_type"] == "qwen2" and model.config.qkv_bias and not model.config.attention_bias


def test_tied_gguf_ties_lm_head(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "tied.gguf"
    write_tiny_gguf(path, tiny_spec(tied=True), tokenizer)
    model = read_gguf(path)
    assert model.hf_config["tie_word_embeddings"] is True and "lm_head.weight" not in model.tensors
    ours = LlamaForCausalLM(LlamaConfig(**model.hf_config)).eval()
    missing, unexpected = ours.load_state_dict(model.tensors, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    assert torch.equal(ours.lm_head.weight, model.tensors["model.embed_tokens.weight"])
    reference = hf_gguf_model(path)
    assert torch.equal(reference.lm_head.weight, model.tensors["model.embed_tokens.weight"])
    torch.testing.assert_close(logits(ours), logits(reference), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# round trips through write_gguf


def test_round_trip_f32_is_exact(tmp_path, tokenizer):
    path = tmp_path / "src.gguf"
    write_tiny_gguf(path, tiny_spec(tied=False), tokenizer, mixed_types)
    first = read_gguf(path)
    out = write_gguf(
        tmp_path / "out.gguf",
        first.hf_config,
        first.tensors,
        first.tokenizer_json,
        chat_template="{{ messages }}",
        tokenizer_pre=first.tokenizer_pre,
    )
    second = read_gguf(out)
    assert_same_tensors(first.tensors, second.tensors)
    assert second.hf_config == first.hf_config
    assert second.chat_template == "{{ messages }}"
    a, b = Tokenizer.from_str(first.tokenizer_json), Tokenizer.from_str(second.tokenizer_json)
    assert [a.encode(t).ids for t in TEXTS] == [b.encode(t).ids for t in TEXTS]
    assert set(second.tensor_types.values()) == {"F32"}


@pytest.mark.parametrize("dtype,two_d_type", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_round_trip_lossy_dtypes(tmp_path, tokenizer, dtype, two_d_type):
    path = tmp_path / "src.gguf"
    write_tiny_gguf(path, tiny_spec(tied=False), tokenizer)
    first = read_gguf(path)
    second = read_gguf(
        write_gguf(tmp_path / f"{dtype}.gguf", first.hf_config, first.tensors, first.tokenizer_json, dtype=dtype)
    )
    for name, w in first.tensors.items():
        if w.ndim == 1:
            assert torch.equal(second.tensors[name], w) and second.tensor_types[name] == "F32"
            continue
        assert second.tensor_types[name] == two_d_type
        scale = w.abs().amax()
        tolerance = {"f16": 1e-3 * scale, "bf16": 2**-8 * scale, "q8_0": scale / 127}[dtype]
        assert (second.tensors[name] - w).abs().max() <= tolerance, name


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_llama_to_gguf_gives_equal_logits(tmp_path, tokenizer, tied):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    source = LlamaForCausalLM(config).eval()
    source.save_pretrained(tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    state = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "gguf").mkdir()
    out = write_gguf(tmp_path / "gguf" / "m.gguf", hf_config, state, tokenizer.to_str())
    loaded = hf_gguf_model(out)
    torch.testing.assert_close(logits(loaded), logits(source), rtol=0, atol=1e-5)
    theirs = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert [theirs(t)["input_ids"] for t in TEXTS] == [tokenizer.encode(t).ids for t in TEXTS]


def test_transformers_qwen2_to_gguf_gives_equal_logits(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer("qwen2")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    source = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random init leaves the biases at zero, which would not test them
        for layer in source.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    (tmp_path / "g").mkdir()
    out = write_gguf(tmp_path / "g" / "q.gguf", source.config.to_dict(), source.state_dict(), tokenizer.to_str())
    torch.testing.assert_close(logits(hf_gguf_model(out)), logits(source), rtol=0, atol=1e-5)
    back = read_gguf(out)
    assert back.tokenizer_pre == "qwen2" and back.config.qkv_bias


def test_read_gguf_config_builds_the_same_model_as_transformers(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, tiny_spec(tied=False), tokenizer, mixed_types)
    model = read_gguf(path)
    ours = LlamaForCausalLM(LlamaConfig(**model.hf_config)).eval()
    ours.load_state_dict(model.tensors, strict=True)
    reference = hf_gguf_model(path)
    assert_same_tensors(ours.state_dict(), reference.state_dict())
    torch.testing.assert_close(logits(ours), logits(reference), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# RoPE scaling in GGUF


def _config(**rope) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": 96,
        "hidden_size": 128,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 10000.0, **rope},
    }


def _random_state(config: dict) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config)).state_dict()


@pytest.mark.parametrize(
    "rope",
    [
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
        {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 2.5,
            "original_max_position_embeddings": 512,
        },
        {"rope_type": "linear", "factor": 2.0},
    ],
    ids=["llama3", "llama3-other", "linear"],
)
def test_rope_scaling_round_trip(tmp_path, rope):
    config = _config(**rope)
    model = read_gguf(write_gguf(tmp_path / "r.gguf", config, _random_state(config), None))
    assert model.hf_config["rope_scaling"] == rope
    assert all(type(v) in (str, int, float) for v in model.hf_config["rope_scaling"].values())  # not numpy scalars


def test_llama3_rope_freqs_match_transformers_frequencies():
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024,
    }
    base = rope_inv_freq(64, 10000.0, None)
    scaled = rope_inv_freq(64, 10000.0, scaling)
    np.testing.assert_allclose(llama3_rope_factors(64, 10000.0, scaling), (base / scaled).numpy(), rtol=1e-6)


def test_unrecognisable_rope_freqs_is_refused(tmp_path, tokenizer):
    def add_freqs(writer):
        writer.add_tensor("rope_freqs.weight", np.linspace(1.0, 3.0, 8, dtype=np.float32) ** 3)

    path = tmp_path / "f.gguf"
    write_tiny_gguf(path, tiny_spec(), tokenizer, extra_meta=add_freqs)
    with pytest.raises(PlinthError, match="rope_freqs"):
        read_gguf(path)


# ---------------------------------------------------------------------------------------------------------
# bad input


def _one_line_error(call, *args, match: str = "", **kwargs) -> str:
    with pytest.raises(PlinthError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = _one_line_error(read_gguf, tmp_path / "nope.gguf", match="no such file")
    assert str(tmp_path / "nope.gguf") in message


def test_not_a_gguf(tmp_path):
    (tmp_path / "a.gguf").write_text("hello, I am a text file\n")
    assert str(tmp_path / "a.gguf") in _one_line_error(read_gguf, tmp_path / "a.gguf", match="not a GGUF")
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert str(tmp_path / "empty.gguf") in _one_line_error(read_gguf, tmp_path / "empty.gguf", match="not a GGUF")


def test_truncated_files(tmp_path, tokenizer):
    path = tmp_path / "whole.gguf"
    write_tiny_gguf(path, tiny_spec(), tokenizer)
    data = path.read_bytes()
    for cut in (6, 30, len(data) // 8, len(data) // 2, len(data) - 1):
        part = tmp_path / f"cut{cut}.gguf"
        part.write_bytes(data[:cut])
        message = _one_line_error(read_gguf, part, match="truncated")
        assert message.startswith(str(part))


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_unsupported_architecture(tmp_path, tokenizer, arch):
    path = tmp_path / f"{arch}.gguf"
    write_tiny_gguf(path, tiny_spec(arch=arch), tokenizer)
    assert str(path) in _one_line_error(read_gguf, path, match=f"architecture '{arch}' is not supported")


def test_unsupported_tensor_type(tmp_path, tokenizer):
    # Q2_K: gguf can dequantize it, but it is not in READ_TYPES (not verified against a reference here)
    path = tmp_path / "q2k.gguf"
    spec = tiny_spec(n_layer=1, d_model=256, d_ff=256)
    write_tiny_gguf(path, spec, tokenizer, lambda name: Q.Q2_K if name.endswith("ffn_up.weight") else Q.F32)
    assert str(path) in _one_line_error(read_gguf, path, match="Q2_K")


def test_missing_metadata_and_unexpected_tensor(tmp_path, tokenizer):
    path = tmp_path / "nometa.gguf"
    write_tiny_gguf(path, tiny_spec(), tokenizer, skip_keys=("llama.block_count",))
    _one_line_error(read_gguf, path, match="llama.block_count")
    path = tmp_path / "extra.gguf"
    write_tiny_gguf(
        path,
        tiny_spec(),
        tokenizer,
        extra_meta=lambda w: w.add_tensor("blk.0.attn_q_norm.weight", np.ones(16, np.float32)),
    )
    _one_line_error(read_gguf, path, match="unexpected tensor blk.0.attn_q_norm.weight")


def test_inconsistent_files(tmp_path, tokenizer):
    # k rows that are not n_kv_head heads: caught from the shapes, before any tensor is unpacked
    path = tmp_path / "kv.gguf"
    write_tiny_gguf(path, tiny_spec(), tokenizer, extra_meta=lambda w: w.add_uint32("llama.attention.head_count_kv", 4))
    _one_line_error(read_gguf, path, match="blk.0.attn_k.weight has shape")
    path = tmp_path / "kv3.gguf"
    write_tiny_gguf(path, tiny_spec(), tokenizer, extra_meta=lambda w: w.add_uint32("llama.attention.head_count_kv", 3))
    message = _one_line_error(read_gguf, path, match="num_key_value_heads")
    assert message.startswith(str(path))
    path = tmp_path / "vocab.gguf"
    write_tiny_gguf(path, tiny_spec(vocab=50), tokenizer)  # fewer embedding rows than tokens
    _one_line_error(read_gguf, path, match="tokens but token_embd.weight has only 50 rows")


def test_write_rejects_bad_input(tmp_path, tokenizer):
    config = _config()
    state = _random_state(config)
    target = tmp_path / "w.gguf"
    _one_line_error(write_gguf, target, config, state, None, dtype="q4_0", match="dtype 'q4_0'")
    _one_line_error(write_gguf, tmp_path / "no" / "w.gguf", config, state, None, match="does not exist")
    _one_line_error(write_gguf, target, {**config, "hidden_act": "gelu"}, state, None, match="hidden_act")
    _one_line_error(write_gguf, target, {**config, "model_type": "gpt2"}, state, None, match="model_type")
    broken = dict(state)
    del broken["model.layers.0.mlp.up_proj.weight"]
    _one_line_error(write_gguf, target, config, broken, None, match="missing tensor blk.0.ffn_up.weight")
    broken = {**state, "model.norm.weight": torch.ones(3)}
    _one_line_error(write_gguf, target, config, broken, None, match="output_norm.weight has shape")
    small = {**config, "vocab_size": 10, "tie_word_embeddings": True}
    _one_line_error(write_gguf, target, small, _random_state(small), tokenizer.to_str(), match="vocab_size")
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------------------
# Through Plinth: `plinth import` / `plinth export` / plinth.load of GGUF files


def test_import_gguf_gives_transformers_logits_with_a_quantized_tensor(tmp_path, tokenizer, capsys):
    import plinth
    from plinth.cli.main import main

    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, tiny_spec(tied=False), tokenizer, mixed_types)  # Q8_0/Q4_0/Q4_1/Q5_x/F16/BF16 tensors
    assert main(["import", str(path), "--out", str(tmp_path / "p")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"Q4_0", "Q4_1", "Q8_0", "BF16"} <= set(summary["tensor_types"])
    reference = hf_gguf_model(path)
    for source in (tmp_path / "p", path):
        lm = plinth.load(source, device="cpu")
        ids = torch.randint(0, lm.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(lm.model(ids), reference(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert lm.settings.eos_token_ids == [tokenizer.token_to_id("<|im_end|>")]
    assert lm.settings.bos_token == "<|im_start|>" and lm.settings.add_bos_token is False


def _raw_tensors(path):
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, np.array(t.data).tobytes()) for t in GGUFReader(path).tensors}


def test_pitfall_gqa_permutation_round_trip_gives_identical_tensors(tmp_path, tokenizer):
    from plinth.cli.main import main

    # 8 query heads, 2 key/value heads: undoing k's permutation with the query head count would scramble k
    spec = tiny_spec(tied=False, n_head=8, n_kv_head=2, d_model=64)
    path = tmp_path / "src.gguf"
    write_tiny_gguf(path, spec, tokenizer)
    assert main(["import", str(path), "--out", str(tmp_path / "p")]) == 0
    assert main(["export", str(tmp_path / "p"), "--format", "gguf", "--out", str(tmp_path / "back.gguf")]) == 0
    before, after = _raw_tensors(path), _raw_tensors(tmp_path / "back.gguf")
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name] == after[name], name
    meta = read_gguf(tmp_path / "back.gguf").metadata
    assert meta["tokenizer.ggml.pre"] == "gpt2" and meta["llama.attention.head_count_kv"] == 2


def test_pitfall_no_output_tensor_means_tied_head(tmp_path, tokenizer):
    import plinth

    path = tmp_path / "tied.gguf"
    source, _ = write_tiny_gguf(path, tiny_spec(tied=True), tokenizer)
    assert "output.weight" not in _raw_tensors(path)
    lm = plinth.load(path, device="cpu")
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight  # tied, never left random
    assert torch.equal(lm.model.lm_head.weight, torch.from_numpy(source["model.embed_tokens.weight"]))
    ids = torch.randint(0, lm.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), hf_gguf_model(path)(input_ids=ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_export_gguf_dtypes_read_back_in_plinth_and_transformers(tmp_path, tokenizer, dtype):
    import plinth
    from plinth.cli.main import main

    path = tmp_path / "src.gguf"
    write_tiny_gguf(path, tiny_spec(tied=False), tokenizer)
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / f"{dtype}.gguf"
    assert main(["export", str(path), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    ours, theirs = plinth.load(out, device="cpu"), hf_gguf_model(out)
    ids = torch.randint(0, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), theirs(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert {t for t, _ in _raw_tensors(out).values()} == {"F32", dtype.upper()}


def test_bad_gguf_files_are_one_line_errors_and_write_nothing(tmp_path, tokenizer, capsys):
    from plinth.cli.main import main

    whole = tmp_path / "whole.gguf"
    write_tiny_gguf(whole, tiny_spec(), tokenizer)
    (tmp_path / "cut.gguf").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    write_tiny_gguf(tmp_path / "gpt2.gguf", tiny_spec(arch="gpt2"), tokenizer)
    cases = [(tmp_path / "missing.gguf", "no such file"), (tmp_path / "cut.gguf", "truncated"),
             (tmp_path / "gpt2.gguf", "architecture 'gpt2' is not supported")]
    for path, needle in cases:
        out = tmp_path / f"out-{path.stem}"
        code = main(["import", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".out-{path.stem}")]
    assert main(["import", "builtin:nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown built-in model 'nope'" in capsys.readouterr().err
