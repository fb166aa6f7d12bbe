"""LoRA through peft on Plinth's own GPT: targets, frozen base, adapter saved alone, load onto the base (and not onto
another), several adapters on one base, merge equivalence, `--adapter` on the verbs, interop with HF peft."""

import json

import pytest
import torch

from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.config import LoraOptions
from plinth.models import GPT, preset

peft = pytest.importorskip("peft")
torch.set_num_threads(1)

from plinth.adapt.lora import (  # noqa: E402
    ADAPTER_WEIGHTS,
    apply_lora,
    base_fingerprint,
    load_adapter,
    merge_lora,
    save_adapter,
)


def _gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("test", vocab_size=64, d_model=32, n_head=2, n_kv_head=2, seq_len=32))


def _nudge(model, seed=1):
    """Give the LoRA B matrices values (they start at zero), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


IDS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))


def test_lora_targets_plinth_layer_names_and_freezes_the_base():
    model = apply_lora(_gpt(), LoraOptions(rank=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum("q_proj.lora_A" in n for n in trainable) == 2  # one per layer
    assert not any("k_proj" in n or "mlp" in n for n in trainable)
    assert torch.equal(model(IDS), _gpt()(IDS))  # B starts at zero: the output is unchanged at first


def test_a_target_matching_nothing_is_a_one_line_error_naming_the_layers():
    with pytest.raises(PlinthError, match="lora targets qkv match no layer; this model's linear layers are: "
                                          "down_proj, gate_proj, k_proj, lm_head, o_proj"):
        apply_lora(_gpt(), LoraOptions(rank=4, targets=["qkv"]))


def test_frozen_base_weights_stay_bit_identical_through_training_steps():
    model = apply_lora(_gpt(), LoraOptions(rank=4, dropout=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(IDS).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert not torch.equal(model(IDS), _gpt()(IDS))


def test_adapter_saved_alone_loads_onto_its_base_and_merges_to_equal_logits(tmp_path):
    base = _gpt()
    fingerprint = base_fingerprint(base)
    opts = LoraOptions(rank=4, alpha=8, dropout=0.0)
    model = apply_lora(_gpt(), opts)
    _nudge(model)
    with torch.no_grad():
        want = model.eval()(IDS)
    info = save_adapter(model, tmp_path / "a", opts, base="base", fingerprint=fingerprint)
    assert info["adapter_bytes"] == (tmp_path / "a" / ADAPTER_WEIGHTS).stat().st_size
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert info["adapter_parameters"] == lora_params < base.num_params() / 4
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json", "plinth_adapter.json"]
    loaded = load_adapter(_gpt(), tmp_path / "a").eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDS), want)
        merged = merge_lora(loaded)
        assert not any("lora" in n for n in merged.state_dict())
        assert set(merged.state_dict()) == set(base.state_dict())
        torch.testing.assert_close(merged(IDS), want, atol=1e-5, rtol=0)


def test_several_adapters_on_one_base_and_none_on_another_base(tmp_path):
    opts = LoraOptions(rank=2, dropout=0.0, targets=["q_proj"])
    fingerprint = base_fingerprint(_gpt())
    outs = []
    for seed in (1, 2):
        m = apply_lora(_gpt(), opts)
        _nudge(m, seed)
        save_adapter(m, tmp_path / f"a{seed}", opts, base="base", fingerprint=fingerprint)
        outs.append(load_adapter(_gpt(), tmp_path / f"a{seed}").eval()(IDS))
    assert not torch.equal(outs[0], outs[1])
    with pytest.raises(PlinthError, match="trained on other base weights"):
        load_adapter(_gpt(seed=5), tmp_path / "a1")
    with pytest.raises(PlinthError, match="trained for another base model .*d_model 32 vs 64"):
        load_adapter(GPT(preset("test", vocab_size=64, d_model=64, n_head=2, n_kv_head=2, seq_len=32)),
                     tmp_path / "a1")
    with pytest.raises(PlinthError, match="not a LoRA adapter folder"):
        load_adapter(_gpt(), tmp_path)


def test_adapter_file_loads_in_hf_peft_on_the_exported_model(tmp_path):
    """Plinth's layer names are HF Llama's: an adapter trained here loads with `PeftModel.from_pretrained` onto the
    same weights in transformers and gives the same logits."""
    transformers = pytest.importorskip("transformers")
    from plinth.models.io import save_hf

    base = _gpt()
    opts = LoraOptions(rank=4, alpha=8, dropout=0.0)
    model = apply_lora(_gpt(), opts)
    _nudge(model)
    save_adapter(model, tmp_path / "a", opts, base="base", fingerprint=base_fingerprint(base))
    save_hf(base, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    hf_lora = peft.PeftModel.from_pretrained(hf, tmp_path / "a").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_lora(IDS).logits, model.eval()(IDS), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# The CLI: LoRA SFT -> adapter -> --adapter on generate / evaluate -> merge -> export -> transformers


def test_lora_sft_adapter_merge_export_round_trip(tmp_path, capsys, monkeypatch):
    import plinth
    from tests.test_sft import _qa_rows, _tiny_model, _write

    base = _tiny_model(tmp_path / "base")
    data = _write(tmp_path / "d.jsonl", _qa_rows(24))
    out = tmp_path / "run"
    assert main(["finetune", "sft", str(base), "--data", str(data), "--run.out_dir", str(out), "--run.max_steps",
                 "4", "--no-run.progress", "--optim.batch_size", "4", "--optim.lr", "1e-2", "--system.device", "cpu",
                 "--system.precision", "fp32", "--system.compile", "off", "--lora.rank", "4", "--lora.targets",
                 "q_proj,v_proj,down_proj", "--samples", "1", "--sample_tokens", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_parameters"] == summary["adapter_parameters"] < summary["parameters"] / 5
    assert summary["adapter_bytes"] < 0.2 * (base / "model.safetensors").stat().st_size
    with_adapter = plinth.load(base, device="cpu", adapter=out / "adapter")
    from_run = plinth.load(out, device="cpu")  # the run's checkpoint: base + LoRA layers
    ids = torch.tensor([with_adapter.chat_ids([{"role": "user", "content": "say 3"}])])
    with torch.no_grad():
        want = with_adapter.model(ids)
        assert torch.equal(from_run.model(ids), want)
        assert not torch.allclose(plinth.load(base, device="cpu").model(ids), want)
    capsys.readouterr()
    assert main(["generate", str(base), "--adapter", str(out / "adapter"), "--chat", "--prompts", "say 3",
                 "--temperature", "0", "--max_new_tokens", "4", "--device", "cpu"]) == 0
    reply = capsys.readouterr().out.strip()
    assert reply == with_adapter.chat([{"role": "user", "content": "say 3"}], temperature=0, max_new_tokens=4).strip()
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("say 3\n/quit\n"))
    assert main(["chat", str(base), "--adapter", str(out / "adapter"), "--temperature", "0", "--max_new_tokens", "4",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == reply
    assert main(["evaluate", str(base), "--adapter", str(out / "adapter"), "--data", str(data), "--field",
                 "response", "--device", "cpu"]) == 0
    assert main(["adapter", "merge", str(base), "--adapter", str(out / "adapter"), "--out",
                 str(tmp_path / "merged")]) == 0
    merged = plinth.load(tmp_path / "merged", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids), want, atol=1e-5, rtol=0)
    transformers = pytest.importorskip("transformers")
    assert main(["export", str(tmp_path / "merged"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, want, atol=1e-5, rtol=0)
    other = _tiny_model(tmp_path / "other", seed=9)
    capsys.readouterr()
    assert main(["generate", str(other), "--adapter", str(out / "adapter"), "--prompts", "x"]) == 2
    err = capsys.readouterr().err
    assert "trained on other base weights" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_smollm2_lora_sft_merge_export(tmp_path, capsys):
    """The README's worked example at a tiny budget on the real SmolLM2: 2 LoRA steps on the sotu instruction set,
    the merged model equal to base + adapter, and transformers reproducing the exported model's logits."""
    transformers = pytest.importorskip("transformers")
    import plinth
    from plinth.pipelines.convert import builtin_model_file

    try:
        builtin_model_file("smollm2-135m-instruct")
    except PlinthError as e:
        pytest.skip(str(e))
    from pathlib import Path

    base, data = "builtin:smollm2-135m-instruct", Path(__file__).parents[1] / "examples/sft/sotu_presidents.jsonl"
    out = tmp_path / "run"
    assert main(["finetune", "sft", base, "--data", str(data), "--lora.rank", "8", "--run.max_steps", "2",
                 "--optim.batch_size", "2", "--optim.lr", "1e-3", "--max_len", "128", "--samples", "1",
                 "--sample_tokens", "6", "--run.out_dir", str(out), "--no-run.progress", "--system.compile", "off",
                 "--system.precision", "fp32", "--val_fraction", "0.02"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_parameters"] == summary["trainable_parameters"] and summary["adapter_bytes"] < 10e6
    lm = plinth.load(base, device="cpu", adapter=out / "adapter")
    ids = torch.tensor([lm.chat_ids([{"role": "user", "content": "Who delivered the 1863 address?"}])])
    with torch.no_grad():
        want = lm.model(ids)
    assert main(["adapter", "merge", base, "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m")]) == 0
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        merged = plinth.load(tmp_path / "m", device="cpu").model(ids)
        # fp32 rounding of W + BA through 30 layers: measured max |diff| 1.2e-4 on logits of size ~10 (rel. 2e-5);
        # the 1e-5 equality is pinned on the tiny model above
        torch.testing.assert_close(merged, want, atol=5e-4, rtol=1e-4)
        torch.testing.assert_close(hf(ids).logits, merged, atol=1e-4, rtol=0)


def test_lora_dropout_mask_is_seeded_unbiased_and_its_gradient_is_the_mask():
    """apply_lora puts Plinth's CPU dropout before each LoRA branch: it keeps 1 - p of the elements, scales them by
    1/(1-p), passes the gradient through the same mask, draws the same masks after the same torch seed, and is the
    identity in eval mode."""
    from plinth.adapt.lora import Dropout

    model = apply_lora(_gpt(), LoraOptions(rank=4, alpha=8.0, dropout=0.25, targets=["q_proj", "v_proj"]))
    drops = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(drops) == 4 and all(d.p == 0.25 for d in drops)  # 2 targets x 2 layers
    drop = drops[0].train()
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(7)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    assert torch.all(y[kept] == 1 / 0.75) and abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx is the scaled mask itself
    torch.manual_seed(7)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the next draw differs
    assert drop.eval()(x) is x
