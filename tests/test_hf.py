"""Hugging Face configs and folders: config mapping and refusals, RoPE frequencies bit-equal to transformers, logits
equal to transformers (fp32, 1e-5) for every architecture variant, `plinth import`/`export` round trips."""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer

from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.models.hf import gpt_config_from_hf, hf_config_from_gpt
from plinth.models.layers import rope_inv_freq
from tests.gguf_builders import TEXTS, train_tokenizer

# config.json files as published (v4 style), trimmed of fields that do not matter here
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 49152,
}
LLAMA32_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
}
MISTRAL_7B_V02 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32000,
}
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "use_sliding_window": False, "vocab_size": 151936,
}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# ----------------------------------------------------------------------------------------------------------------------
# Config mapping


def test_published_configs_map_to_gpt_configs():
    c = gpt_config_from_hf(SMOLLM2_135M)
    assert (c.vocab_size, c.n_layer, c.n_head, c.n_kv_head, c.d_model, c.head_dim, c.d_ff, c.seq_len) == \
        (49152, 30, 9, 3, 576, 64, 1536, 8192)
    assert (c.rope_theta, c.rope_scaling, c.norm_eps, c.tie_embeddings, c.qkv_bias) == (1e5, None, 1e-5, True, False)
    llama = gpt_config_from_hf(LLAMA32_1B)
    assert llama.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    mistral = gpt_config_from_hf(MISTRAL_7B_V02)
    assert (mistral.n_kv_head, mistral.head_dim, mistral.tie_embeddings) == (8, 128, False)
    qwen = gpt_config_from_hf(QWEN25_05B)
    assert (qwen.qkv_bias, qwen.attention_bias, qwen.head_dim, qwen.norm_eps) == (True, False, 64, 1e-6)
    assert gpt_config_from_hf({**SMOLLM2_135M, "attention_bias": True}).attention_bias


def _transformers_class(model_type):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]


@pytest.mark.parametrize("config", [SMOLLM2_135M, LLAMA32_1B, MISTRAL_7B_V02, QWEN25_05B],
                         ids=["smollm2", "llama3.2", "mistral", "qwen2.5"])
def test_v5_dicts_map_like_v4(config):
    v5 = _transformers_class(config["model_type"])(**copy.deepcopy(config)).to_dict()
    assert "rope_parameters" in v5 and "rope_scaling" not in v5
    assert gpt_config_from_hf(v5) == gpt_config_from_hf(config)


@pytest.mark.parametrize("change,field", [
    ({"model_type": "gpt2"}, "model_type"), ({"model_type": None}, "model_type"),
    ({"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"), ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_type"),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "rope_type"),
    ({"rope_scaling": {"rope_type": "linear"}}, "rope_scaling.factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}, "rope_scaling.high_freq_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"), ({"num_key_value_heads": 4}, "num_key_value_heads"),
    ({"hidden_size": None}, "hidden_size"), ({"vocab_size": 0}, "vocab_size"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_unsupported_fields_are_one_line_errors_naming_them(change, field):
    with pytest.raises(PlinthError, match=f"'{field}'") as info:
        gpt_config_from_hf({**SMOLLM2_135M, **change})
    assert "\n" not in str(info.value)


def test_sliding_window_refused_only_when_used():
    for cfg, field in (({**MISTRAL_7B_V02, "sliding_window": 4096}, "sliding_window"),
                       ({k: v for k, v in MISTRAL_7B_V02.items() if k != "sliding_window"}, "sliding_window"),
                       ({**QWEN25_05B, "use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window")):
        with pytest.raises(PlinthError, match=field):
            gpt_config_from_hf(cfg)
    assert gpt_config_from_hf({**MISTRAL_7B_V02, "sliding_window": 32768}).seq_len == 32768
    # Qwen2 windows only layers >= max_window_layers: with every layer below it, the window is never used
    assert gpt_config_from_hf({**QWEN25_05B, "use_sliding_window": True, "sliding_window": 4096,
                               "max_window_layers": 24}).n_layer == 24


@pytest.mark.parametrize("config", [SMOLLM2_135M, LLAMA32_1B, MISTRAL_7B_V02, QWEN25_05B,
                                    {**SMOLLM2_135M, "rope_scaling": {"type": "linear", "factor": 4.0}}],
                         ids=["smollm2", "llama3.2", "mistral", "qwen2.5", "linear"])
def test_written_configs_round_trip_and_load_in_transformers(config):
    ours = gpt_config_from_hf(config)
    hf = hf_config_from_gpt(ours)
    assert gpt_config_from_hf(hf) == ours
    loaded = _transformers_class(hf["model_type"])(**copy.deepcopy(hf))
    assert loaded.rope_parameters["rope_theta"] == ours.rope_theta
    assert loaded.rope_parameters["rope_type"] == (ours.rope_scaling or {"rope_type": "default"})["rope_type"]
    assert gpt_config_from_hf(loaded.to_dict()) == ours


SCALINGS = [None, {"rope_type": "linear", "factor": 4.0},
            {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 6.0,
             "original_max_position_embeddings": 1024}]


@pytest.mark.parametrize("scaling", SCALINGS, ids=["default", "linear", "llama3", "llama3-odd"])
@pytest.mark.parametrize("head_dim,theta", [(64, 10000.0), (128, 500000.0), (16, 1e6)])
def test_rope_inv_freq_is_bit_equal_to_transformers(head_dim, theta, scaling):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=131072, rope_parameters={"rope_type": "default", **(scaling or {}),
                                                                         "rope_theta": theta})
    module = LlamaRotaryEmbedding(config)
    ours = rope_inv_freq(head_dim, theta, scaling)
    assert ours.dtype == torch.float32 and torch.equal(module.inv_freq, ours) and module.attention_scaling == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Folders: every variant's logits equal transformers'


VARIANTS = {
    # llama: untied, grouped-query, llama3 RoPE scaling, sharded safetensors
    "llama-untied-llama3-sharded": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}), True),
    # llama: explicit head_dim (not hidden/heads), linear RoPE scaling, q/k/v/o biases, tied
    "llama-head-dim-linear-bias": ("llama", dict(num_key_value_heads=4, head_dim=24, attention_bias=True,
                                                 rope_scaling={"rope_type": "linear", "factor": 2.0}), False),
    "qwen2-qkv-bias": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=False), False),
    "mistral": ("mistral", dict(num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False), False),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("gpt2", vocab_size=300)


def make_hf_folder(path, tokenizer, model_type, overrides, shard=False, seed=0):
    """A random tiny transformers model of `model_type` saved with its tokenizer and a chat template; returns it."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    config_class = _transformers_class(model_type)
    base = dict(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                bos_token_id=tokenizer.token_to_id("<|im_start|>"), eos_token_id=tokenizer.token_to_id("<|im_end|>"),
                tie_word_embeddings=True)
    rope = overrides.pop("rope_scaling", None)
    config = config_class(**{**base, **overrides})
    if rope:
        config.rope_parameters = {**rope, "rope_theta": 10000.0}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # move norms off 1 and biases off 0, so the comparison sees them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, max_shard_size="40KB" if shard else "5GB")
    copy_ = Tokenizer.from_str(tokenizer.to_str())  # transformers may change the object it wraps: keep ours intact
    fast = PreTrainedTokenizerFast(tokenizer_object=copy_, bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    assert (path / "model.safetensors.index.json").exists() == shard
    return model


def ids_for(model, n=2, t=40, seed=1):
    return torch.randint(0, model.config.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_gives_transformers_logits(tmp_path, tokenizer, variant, capsys):
    import plinth

    model_type, overrides, shard = VARIANTS[variant]
    hf = make_hf_folder(tmp_path / "hf", tokenizer, model_type, dict(overrides), shard)
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "plinth")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "hf" and summary["chat_template"] is True
    for source in (tmp_path / "plinth", tmp_path / "hf"):  # the imported folder, and the HF folder read directly
        lm = plinth.load(source, device="cpu")
        x = ids_for(hf)
        with torch.no_grad():
            torch.testing.assert_close(lm.model(x), hf(x).logits, atol=1e-5, rtol=0)
    assert lm.settings.eos_token_ids == [tokenizer.token_to_id("<|im_end|>")]
    prompt = lm.chat_prompt([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_hf_loads_in_transformers_with_equal_logits(tmp_path, tokenizer, variant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_type, overrides, shard = VARIANTS[variant]
    if model_type == "qwen2":  # transformers v5 reads any qwen2 tokenizer as Qwen2Tokenizer (its own splitting)
        tokenizer = train_tokenizer("qwen2", vocab_size=300)
    hf = make_hf_folder(tmp_path / "hf", tokenizer, model_type, dict(overrides), shard)
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "p")]) == 0
    assert main(["export", str(tmp_path / "p"), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back).__name__ == ("Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM")
    x = ids_for(hf)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, atol=1e-5, rtol=0)
    theirs = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert [theirs(t, add_special_tokens=False)["input_ids"] for t in TEXTS] == [tokenizer.encode(t).ids for t in TEXTS]
    messages = [{"role": "user", "content": "hi"}]
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert back.generation_config.eos_token_id == tokenizer.token_to_id("<|im_end|>")


@pytest.mark.parametrize("dtype,tolerance", [("bf16", 0.05), ("f16", 5e-3)])
def test_export_hf_lower_precision(tmp_path, tokenizer, dtype, tolerance):
    from transformers import AutoModelForCausalLM

    hf = make_hf_folder(tmp_path / "hf", tokenizer, "llama", {"num_key_value_heads": 2})
    assert main(["export", str(tmp_path / "hf"), "--format", "hf", "--dtype", dtype, "--out", str(tmp_path / "o")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "o", dtype=torch.float32).eval()
    stored = json.loads((tmp_path / "o" / "config.json").read_text())["dtype"]
    assert stored == {"bf16": "bfloat16", "f16": "float16"}[dtype]
    x = ids_for(hf)
    with torch.no_grad():
        assert (back(x).logits - hf(x).logits).abs().max() < tolerance


def test_export_gguf_round_trips_and_transformers_reads_it(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    import plinth

    hf = make_hf_folder(tmp_path / "hf", tokenizer, "qwen2", {"num_key_value_heads": 2, "tie_word_embeddings": False})
    (tmp_path / "g").mkdir()
    gguf = tmp_path / "g" / "m.gguf"
    assert main(["export", str(tmp_path / "hf"), "--format", "gguf", "--out", str(gguf)]) == 0
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = plinth.load(gguf, device="cpu")
    x = ids_for(hf)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, hf(x).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.model(x), hf(x).logits, atol=1e-5, rtol=0)
    assert ours.chat_prompt([{"role": "user", "content": "x"}]).startswith("<|im_start|>user")


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_hf_folders_are_one_line_errors_and_write_nothing(tmp_path, tokenizer, capsys):
    make_hf_folder(tmp_path / "hf", tokenizer, "llama", {})
    capsys.readouterr()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cases = {}
    for name, change in (("unknown", {"model_type": "gpt_neox"}), ("gelu", {"hidden_act": "gelu"})):
        folder = tmp_path / name
        folder.mkdir()
        for f in (tmp_path / "hf").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        cases[name] = folder
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(cfg))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (pickled / "tokenizer.json").write_text(tokenizer.to_str())
    for folder, needle in ((cases["unknown"], "'model_type': 'gpt_neox' is not supported"),
                           (cases["gelu"], "'hidden_act'"), (pickled, "pickled weights are never loaded"),
                           (tmp_path / "missing", "no such file or folder")):
        out = tmp_path / f"out-{folder.name}"
        assert main(["import", str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists() and not list(tmp_path.glob(f".out-{folder.name}*"))


def test_import_refuses_to_overwrite(tmp_path, tokenizer, capsys):
    make_hf_folder(tmp_path / "hf", tokenizer, "llama", {})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").exists()
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "out"), "--force"]) == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "manifest.json").exists()
    argv = ["export", str(tmp_path / "out"), "--format", "hf", "--dtype", "q8_0", "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    assert "q8_0 is a GGUF type" in capsys.readouterr().err


def test_a_model_plinth_pretrained_exports_to_hf(tiny_data, tmp_path, capsys):
    """A run's checkpoint (character tokenizer with byte fallback) exports to an HF folder transformers loads with equal
    logits; GGUF's byte-level vocabulary cannot hold that tokenizer, which is one line, and nothing is written."""
    from transformers import AutoModelForCausalLM

    import plinth
    from plinth.training.lm import pretrain
    from tests.test_training import tiny_config

    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))
    assert main(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    lm = plinth.load(tmp_path / "run", device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([lm.tokenizer.encode("the people of the union")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm.model(x), atol=1e-5, rtol=0)
    assert hf.generation_config.eos_token_id == lm.tokenizer.eos_id
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "not byte-level BPE" in err and err.count("\n") == 1 and not (tmp_path / "m.gguf").exists()
