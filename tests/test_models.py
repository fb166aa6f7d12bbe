"""GPT: HF Llama parity, golden forward value, KV cache, left padding, size arithmetic, save/load."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the network

import pytest
import safetensors.torch
import torch

from plinth.common import PlinthError
from plinth.models import GPT, load_hf_llama, load_model, preset, preset_table, save_hf_llama, save_model
from plinth.models.gpt import config_flops_per_token, config_params
from plinth.models.io import from_hf_llama_config, to_hf_llama_config
from plinth.models.registry import config_from_dict

VOCAB = 256  # small vocabulary keeps the HF models and logits cheap


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset("test", vocab_size=VOCAB, **overrides)).eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face parity


def hf_llama(cfg, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_llama_config(cfg))).eval()
    with torch.no_grad():  # move the norm gains off 1 so the parity test sees them
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


@pytest.mark.parametrize("n_kv_head,tie,extra", [(2, True, {}), (2, False, {}), (4, False, {}),
                                                (2, True, {"attention_bias": True, "head_dim": 24})],
                         ids=["gqa-tied", "gqa-untied", "mha", "qkv-bias-explicit-head-dim"])
def test_hf_parity(n_kv_head, tie, extra):
    cfg = preset("test", vocab_size=VOCAB, n_kv_head=n_kv_head, tie_embeddings=tie, **extra)
    hf = hf_llama(cfg)
    model = GPT(cfg).eval()
    assert list(model.state_dict()) == list(hf.state_dict())  # same names, same order, tied lm_head included
    model.load_state_dict(hf.state_dict(), strict=True)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x, logits_to_keep=1), hf(x).logits[:, -1:], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.model(x), hf.model(x).last_hidden_state, atol=1e-5, rtol=0)


def test_hf_parity_left_padded():
    cfg = preset("test", vocab_size=VOCAB)
    hf = hf_llama(cfg)
    model = GPT(cfg).eval()
    model.load_state_dict(hf.state_dict())
    x = tokens(2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        ref = hf(x, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        out = model(x, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_save_hf_llama_loads_in_transformers(tmp_path, tie):
    from transformers import LlamaForCausalLM

    model = small_model(tie_embeddings=tie)
    save_hf_llama(model, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie,shard", [(True, False), (False, True)], ids=["tied", "untied-sharded"])
def test_load_hf_llama_reads_save_pretrained(tmp_path, tie, shard):
    hf = hf_llama(preset("test", vocab_size=VOCAB, tie_embeddings=tie))
    hf.save_pretrained(tmp_path, max_shard_size="100KB" if shard else "5GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == shard
    model = load_hf_llama(tmp_path)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    x = tokens(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=0)


def test_hf_config_round_trip_and_refusals():
    cfg = preset("test", vocab_size=VOCAB, rope_theta=5e5, tie_embeddings=False)
    back = from_hf_llama_config(to_hf_llama_config(cfg))
    assert {**vars(back), "name": cfg.name} == vars(cfg)
    # transformers v4 layout: a top-level rope_theta and no rope_parameters
    old = {k: v for k, v in to_hf_llama_config(cfg).items() if k != "rope_parameters"} | {"rope_theta": 1234.0}
    assert from_hf_llama_config(old).rope_theta == 1234.0
    with pytest.raises(PlinthError, match="llama3"):
        from_hf_llama_config({**old, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(PlinthError, match="mlp_bias"):
        from_hf_llama_config({**old, "mlp_bias": True})
    assert from_hf_llama_config({**old, "attention_bias": True}).attention_bias
    with pytest.raises(PlinthError, match="num_hidden_layers"):
        from_hf_llama_config({k: v for k, v in old.items() if k != "num_hidden_layers"})


# ----------------------------------------------------------------------------------------------------------------------
# Forward behaviour


def test_golden_forward_value():
    # Pinned from the first implementation: a change here means init order, init scale or the forward changed.
    torch.manual_seed(0)
    model = GPT(preset("test"))
    x = (torch.arange(32).view(2, 16) * 97) % 4096
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 16, 4096) and logits.dtype == torch.float32
    assert logits.abs().mean().item() == pytest.approx(0.12613433599472046, abs=1e-4)
    assert logits.sum().item() == pytest.approx(2.708353042602539, abs=1e-4, rel=1e-4)
    expected = torch.tensor([-0.282184362411499, -0.0809551477432251, 0.02835964411497116, 0.0668896734714508])
    torch.testing.assert_close(logits[0, -1, :4], expected, atol=1e-4, rtol=0)


def test_kv_cache_decode_matches_full_forward():
    model = small_model()
    x = tokens(2, 20)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 24)
        # prefill 8, then a 3-token chunk after a prefix (explicit offset-causal mask), then one at a time
        parts = [model(x[:, :8], cache=cache), model(x[:, 8:11], cache=cache)]
        parts += [model(x[:, t : t + 1], cache=cache) for t in range(11, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2, "qkv_bias": True, "tie_embeddings": False}])
def test_decode_fast_path_equals_the_general_forward(monkeypatch, overrides, split):
    """One-token steps over an unpadded KV cache take `Decoder._decode_one` (module calls unrolled); its logits and
    the cache it leaves equal the general forward's bit for bit, with grouped-query heads and q/k/v biases too, with
    and without `Linear`'s per-thread split, and a hook on any block, or a block wrapped in another class, sends
    decoding back through the modules."""
    from plinth.models import layers

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setitem(layers._SPLIT_PAYS, 2, split)
    try:
        _check_decode_fast_path(monkeypatch, overrides)
    finally:
        torch.set_num_threads(threads)


def _check_decode_fast_path(monkeypatch, overrides):
    from plinth.models import gpt

    model = small_model(**overrides)
    x = tokens(2, 14)
    taken = []
    fast, plain_check = gpt.Decoder._decode_one, gpt.Decoder._plain
    monkeypatch.setattr(gpt.Decoder, "_decode_one", lambda self, *a: taken.append(1) or fast(self, *a))

    def decode(plain: bool):
        monkeypatch.setattr(gpt.Decoder, "_plain", (lambda self: False) if not plain else plain_check)
        cache = model.new_cache(2, 16)
        with torch.inference_mode():
            out = [model(x[:, :8], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(8, 14)]
        return torch.cat(out, dim=1), cache

    fast_logits, fast_cache = decode(True)
    assert len(taken) == 6
    slow_logits, slow_cache = decode(False)
    assert len(taken) == 6  # the general path did not take the shortcut
    assert torch.equal(fast_logits, slow_logits)
    assert fast_cache.length == slow_cache.length == 14
    assert torch.equal(fast_cache.key_mask, slow_cache.key_mask)
    assert torch.equal(fast_cache.next_pos, slow_cache.next_pos)
    for a, b in zip(fast_cache.k + fast_cache.v, slow_cache.k + slow_cache.v, strict=True):
        assert torch.equal(a, b)

    seen = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    try:
        _, cache = decode(True)
    finally:
        handle.remove()
    assert len(taken) == 6 and len(seen) == 7  # the prefill and every step ran the hooked module
    assert model.model._plain()
    model.model.layers[0].self_attn.q_proj = torch.nn.Linear(model.config.d_model, model.config.d_model)
    assert not model.model._plain()  # e.g. a LoRA or quantized wrapper: its own forward must run


def test_cache_overflow_raises():
    model = small_model()
    cache = model.new_cache(1, 4)
    with pytest.raises(PlinthError, match="KV cache"), torch.no_grad():
        model(tokens(1, 5), cache=cache)


def test_left_padded_batch_matches_single_rows():
    model = small_model()
    a, b = tokens(1, 12, seed=2)[0], tokens(1, 7, seed=3)[0]
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, 5:] = a, b
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0], mask[1, 5:] = True, True
    with torch.no_grad():
        out = model(batch, attention_mask=mask)
        torch.testing.assert_close(out[0], model(a[None])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, 5:], model(b[None])[0], atol=1e-5, rtol=0)
        # the same through the cache, then a decode step for both rows
        cache = model.new_cache(2, 13)
        model(batch, cache=cache, attention_mask=mask)
        step = model(torch.tensor([[9], [9]]), cache=cache)
        torch.testing.assert_close(step[1, 0], model(torch.cat([b, torch.tensor([9])])[None])[0, -1], atol=1e-5, rtol=0)


def test_rope_beyond_cached_length_matches_longer_table():
    short, long = small_model(seq_len=16), small_model(seq_len=64)
    long.load_state_dict(short.state_dict())
    x = tokens(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(short(x), long(x), atol=1e-5, rtol=0)


def test_rope_tables_not_saved_and_stay_fp32():
    model = small_model()
    assert not any("rotary" in k for k in model.state_dict())
    model.to(torch.bfloat16)
    assert model.model.rotary_emb.cos.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_init_scales_residual_projections():
    model = GPT(preset("tiny"))  # 4 layers: residual std = 0.02 / sqrt(8)
    assert model.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert model.model.norm.weight.eq(1).all()


# ----------------------------------------------------------------------------------------------------------------------
# Size arithmetic


@pytest.mark.parametrize("name", ["test", "tiny"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_arithmetic_equals_real_count(name, tie):
    cfg = preset(name, tie_embeddings=tie)
    model = GPT(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert config_params(cfg) == model.num_params() == real
    embed = cfg.vocab_size * cfg.d_model * (1 if tie else 2)
    assert config_params(cfg, non_embedding=True) == model.num_params(non_embedding=True) == real - embed
    if tie:
        row = next(r for r in preset_table() if r["name"] == name)
        assert row["params"] == real and row["flops_per_token"] == model.flops_per_token()


def test_flops_formula_and_table():
    cfg = preset("test")  # d 64, 2 layers, 4 heads of 16, 2 kv heads, d_ff 192, vocab 4096, seq 64
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 192
    assert config_flops_per_token(cfg) == 6 * 2 * per_layer + 6 * 64 * 4096 + 12 * 2 * 64 * 64
    assert config_flops_per_token(cfg, seq_len=1) < config_flops_per_token(cfg)
    rows = preset_table(vocab_size=1000)
    assert [r["name"] for r in rows][:2] == ["test", "tiny"] and all(r["vocab_size"] == 1000 for r in rows)
    one_b = next(r for r in preset_table() if r["name"] == "1b")
    assert one_b["params"] + 32000 * 2048 == 1_100_048_384  # TinyLlama-1.1B, whose lm_head is untied


# ----------------------------------------------------------------------------------------------------------------------
# Save / load


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    model = small_model(tie_embeddings=tie)
    save_model(model, tmp_path)
    stored = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not tie)  # one copy of a tied matrix
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["family"] == "gpt" and meta["format_version"] == 1 and meta["d_model"] == 64
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(PlinthError, match="config.json"):
        load_model(tmp_path)
    save_model(small_model(), tmp_path)
    config = tmp_path / "config.json"
    good = config.read_text()
    config.write_text("{not json")
    with pytest.raises(PlinthError, match="config.json"):
        load_model(tmp_path)
    config.write_text(good.replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(PlinthError, match=r"model\.safetensors.*missing"):
        load_model(tmp_path)
    config.write_text(good.replace('"vocab_size": 256', '"vocab_size": 300'))
    with pytest.raises(PlinthError, match=r"model\.safetensors.*shape"):
        load_model(tmp_path)
    config.write_text(good.replace('"n_layer"', '"n_layers"'))
    with pytest.raises(PlinthError, match="config.json.*n_layers"):
        load_model(tmp_path)
    config.write_text(good)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(PlinthError, match=r"model\.safetensors"):
        load_model(tmp_path)


def test_model_config_from_dict():
    cfg = preset("test")
    assert config_from_dict({**vars(cfg), "family": "gpt", "format_version": 1}, "config.json") == cfg
    with pytest.raises(PlinthError, match="d_model"):
        config_from_dict({**vars(cfg), "d_model": 63, "head_dim": 0}, "config.json")
    with pytest.raises(PlinthError, match="config.json: field 'd_model': expects an integer, got 64.0"):
        config_from_dict({**vars(cfg), "d_model": 64.0}, "config.json")
    with pytest.raises(PlinthError, match="unknown model family 'nosuchfamily'"):
        config_from_dict({**vars(cfg), "family": "nosuchfamily"}, "config.json")


def test_linear_one_row_product_on_every_thread_equals_nn_linear():
    """The split of a few-row product across threads (layers.Linear) gives nn.Linear's values, with and without a
    bias, for any leading shape (300 rows: past the split's limit); with gradients on it is nn.Linear itself."""
    from plinth.models import layers
    from plinth.models.layers import Linear

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    measured = layers._SPLIT_PAYS.get(2)
    layers._SPLIT_PAYS[2] = True  # the split path, whatever this machine's measurement chose
    try:
        torch.manual_seed(0)
        for bias in (False, True):
            layer = Linear(48, 64, bias=bias)
            for shape in ((48,), (1, 48), (1, 1, 48), (3, 48), (2, 5, 48), (300, 48)):
                x = torch.randn(shape)
                with torch.no_grad():
                    got = layer(x)
                want = torch.nn.functional.linear(x, layer.weight, layer.bias)
                assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6, rtol=0)
        y = layer(torch.randn(1, 48, requires_grad=True))
        y.sum().backward()
        assert layer.weight.grad is not None
    finally:
        torch.set_num_threads(threads)
        if measured is None:
            layers._SPLIT_PAYS.pop(2)
        else:
            layers._SPLIT_PAYS[2] = measured
    assert isinstance(layers.split_pays(2), bool) and layers.split_pays(1) is False


def test_models_build_on_meta_without_initialisers_and_loading_does_not_import_dynamo(tmp_path):
    """`on_meta` builds shapes only, with torch.nn.init's functions as no-ops only while it runs (restored after,
    even when the constructor raises); loading a saved model in a fresh process imports neither torch._dynamo nor
    sympy, the ~2.5 s that meta-device initialisation and `to_empty` used to add to every command."""
    import subprocess
    import sys

    from plinth.models.registry import on_meta

    normal = torch.nn.init.normal_
    calls = []
    torch.nn.init.normal_ = lambda t, *a, **k: calls.append(1) or t
    try:
        model = on_meta(GPT, preset("test", vocab_size=VOCAB))
        assert calls == [] and model.lm_head.weight.is_meta
        assert torch.nn.init.normal_ is not normal  # our spy is back in place

        class Broken(torch.nn.Module):
            def __init__(self, config):
                raise ValueError("bad config")

        with pytest.raises(ValueError, match="bad config"):
            on_meta(Broken, None)
        torch.nn.init.normal_(torch.empty(1))
        assert calls == [1]  # restored after the failure too
    finally:
        torch.nn.init.normal_ = normal
    save_model(small_model(), tmp_path / "m")
    code = ("import sys, plinth.models as m; model = m.load_model(sys.argv[1]); "
            "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'; "
            "assert 'sympy' not in sys.modules, 'sympy imported'; print(model.num_params())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == small_model().num_params()
