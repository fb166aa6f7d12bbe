"""Model families and their I/O: the family registry, `GPT` (Llama layout), decoding, saving/loading model folders.

Built-in families are registered here, one line each; see docs/architecture.md for adding a family.
"""

from typing import Any

from plinth.models import bert, captioner, clip, cnn, textclf, vit
from plinth.models.cache import KVCache
from plinth.models.generate import generate, generate_tokens, sample_next_token
from plinth.models.gpt import GPT, GPTConfig, config_flops_per_token, config_params
from plinth.models.gpt import PRESETS as GPT_PRESETS
from plinth.models.io import load_hf, load_hf_llama, load_model, load_weights, save_hf, save_hf_llama, save_model
from plinth.models.registry import (
    Family,
    build_model,
    families,
    family_of,
    find_preset,
    get_family,
    make_config,
    on_meta,
    register,
)

register(Family("gpt", GPTConfig, GPT, GPT_PRESETS, "decoder-only transformer, Llama layout (RoPE, RMSNorm, "
                                                      "SwiGLU, grouped-query attention)"))
register(Family("cnn", cnn.CNNConfig, cnn.CNN, cnn.PRESETS, "ResNet image classifier (HF ResNet layout)"))
register(Family("vit", vit.ViTConfig, vit.ViT, vit.PRESETS, "vision transformer (HF CLIP vision tower layout)"))
register(Family("bert", bert.BertConfig, bert.Bert, bert.PRESETS, "BERT encoder (HF BertModel layout; MiniLM)"))
register(Family("clip", clip.CLIPConfig, clip.CLIP, clip.PRESETS, "image and text towers in one embedding space, "
                                                                  "learned temperature (HF CLIPModel layout)"))
register(Family("captioner", captioner.CaptionerConfig, captioner.Captioner, captioner.PRESETS,
                "ViT encoder -> projected prefix -> GPT decoder (captions, visual question answering)"))
register(Family("text_classifier", textclf.TextClassifierConfig, textclf.TextClassifier, textclf.PRESETS,
                "a pretrained gpt or bert backbone + a linear head on pooled features (text classification)"))


def preset(name: str, **overrides: Any):
    """The config of preset `name` (of whichever family defines it) with field overrides; None keeps a field."""
    return make_config(name, overrides, where="preset")


def preset_table(vocab_size: int | None = None) -> list[dict]:
    """One row per GPT size preset: shape, parameter count and training FLOPs per token (nothing is allocated)."""
    rows = []
    for name in GPT_PRESETS:
        cfg = preset(name, vocab_size=vocab_size)
        rows.append({
            "family": "gpt", "name": name, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head,
            "d_model": cfg.d_model, "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
            "params": config_params(cfg), "flops_per_token": config_flops_per_token(cfg),
        })
    return rows


def other_preset_table() -> list[dict]:
    """One row per preset of the non-GPT families (image, text-encoder, multimodal): its shape in words and its
    parameter count (built on the meta device: nothing is allocated)."""
    rows = []
    for fam in families():
        if fam.name == "gpt":
            continue
        for name in fam.presets:
            cfg = preset(name)
            n = sum(p.numel() for p in on_meta(fam.model_class, cfg).parameters())
            shape = {k: v for k, v in vars(cfg).items() if k != "name" and not isinstance(v, (list, dict))}
            keys = ("image_size", "patch_size", "n_layer", "vision_n_layer", "d_model", "vision_d_model",
                    "text_tower", "text_n_layer", "text_d_model", "hidden_sizes", "vocab_size")
            summary = ", ".join(f"{k} {getattr(cfg, k)}" for k in keys if hasattr(cfg, k))
            rows.append({"family": fam.name, "name": name, "shape": summary, "params": n, **shape})
    return rows


__all__ = [
    "GPT", "Family", "GPTConfig", "KVCache", "build_model", "families", "family_of", "find_preset", "generate",
    "other_preset_table",
    "generate_tokens", "get_family", "load_hf", "load_hf_llama", "load_model", "load_weights", "make_config", "preset",
    "preset_table", "register", "sample_next_token", "save_hf", "save_hf_llama", "save_model",
]
