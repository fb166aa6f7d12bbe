"""Hugging Face `config.json` of a Llama-family decoder <-> `GPTConfig`: the config half of HF conversion.

Covers `model_type` llama (SmolLM and TinyLlama are llama), mistral and qwen2: pre-norm decoders with RMSNorm,
SiLU-gated MLPs and rotary embeddings, as `GPT` computes them. Anything that would make a model compute something else
(another activation, MLP biases, a sliding window that is actually used, partial rotary, RoPE types other than default,
linear and llama3) is refused with a one-line PlinthError naming the field, never loaded into a model that differs.

Both spellings transformers writes are read: v4 (`rope_theta` + `rope_scaling`) and v5 (`rope_parameters`). Weights
need no translation (GPT's parameter names are HF's); `io.py` reads and writes them.
"""

from __future__ import annotations

from typing import Any

from plinth.config import PlinthError
from plinth.models.gpt import GPTConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")

# transformers' class defaults for fields a config.json may omit (LlamaConfig, MistralConfig, Qwen2Config).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {"max_position_embeddings": 4096 * 32, "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None},
}
_DEFAULT_THETA = 10000.0  # transformers' default for all three
_DEFAULT_NORM_EPS = 1e-6


def _fail(field: str, message: str) -> None:
    raise PlinthError(f"config field {field!r}: {message}")


def _positive_int(d: dict[str, Any], field: str, default: Any = None) -> int:
    value = d.get(field)
    value = default if value is None else value  # a present-but-null field means "the default" too
    if value is None:
        _fail(field, "is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(field, f"must be a positive integer, got {value!r}")
    return value


def model_type_of(d: dict[str, Any]) -> str:
    """The config's `model_type`, checked to be one GPT can represent."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        _fail("model_type", f"{model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    return model_type


def _check_computation(d: dict[str, Any], model_type: str) -> None:
    """Refuse settings that would make a plain Llama block compute something else."""
    if d.get("hidden_act", "silu") != "silu":
        _fail("hidden_act", f"{d['hidden_act']!r} is not supported (only 'silu')")
    if d.get("mlp_bias", False):
        _fail("mlp_bias", "MLP biases are not supported")
    seq_len = d.get("max_position_embeddings") or _DEFAULTS[model_type]["max_position_embeddings"]
    if model_type == "mistral":
        window = d.get("sliding_window", _DEFAULTS["mistral"]["sliding_window"])
        if window is not None and window < seq_len:
            _fail("sliding_window", f"{window} < max_position_embeddings {seq_len}: sliding-window attention is not "
                                    "supported")
    if model_type == "qwen2" and d.get("use_sliding_window", False):
        # Qwen2 windows only layers at index >= max_window_layers, and only with use_sliding_window.
        window = d.get("sliding_window", 4096)
        if window is not None and window < seq_len and d.get("max_window_layers", 28) < d.get("num_hidden_layers", 0):
            _fail("use_sliding_window", f"true with sliding_window {window} < max_position_embeddings {seq_len}: "
                                        "sliding-window attention is not supported")
    if "sliding_attention" in (d.get("layer_types") or []):
        _fail("layer_types", "sliding-window attention layers are not supported")


def rope_from_hf(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from a v4 (`rope_theta` + `rope_scaling`) or v5 (`rope_parameters`) config.

    transformers' precedence: a v4 `rope_scaling` dict wins over `rope_parameters`, and a theta inside the dict wins
    over the top-level `rope_theta`. llama3 scaling without original_max_position_embeddings falls back to
    max_position_embeddings, as transformers does.
    """
    source = d.get("rope_scaling") or d.get("rope_parameters") or {}
    if not isinstance(source, dict) or any(isinstance(value, dict) for value in source.values()):
        _fail("rope_parameters", "per-layer-type RoPE parameters are not supported")
    theta = source.get("rope_theta")
    theta = float(theta if theta is not None else d.get("rope_theta") or _DEFAULT_THETA)
    partial = source.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        _fail("partial_rotary_factor", f"{partial} is not supported (only full rotary embeddings)")
    rope_type = source.get("rope_type", source.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        _fail("rope_type", f"{rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if rope_type == "default":
        return theta, None
    if source.get("factor") is None:
        _fail("rope_scaling.factor", f"is required for rope_type {rope_type!r}")
    if rope_type == "linear":
        return theta, {"rope_type": "linear", "factor": float(source["factor"])}
    for key in ("low_freq_factor", "high_freq_factor"):
        if source.get(key) is None:
            _fail(f"rope_scaling.{key}", "is required for rope_type 'llama3'")
    original = source.get("original_max_position_embeddings") or d.get("max_position_embeddings")
    if original is None:
        _fail("rope_scaling.original_max_position_embeddings", "is required for rope_type 'llama3'")
    return theta, {"rope_type": "llama3", "factor": float(source["factor"]),
                   "low_freq_factor": float(source["low_freq_factor"]),
                   "high_freq_factor": float(source["high_freq_factor"]),
                   "original_max_position_embeddings": int(original)}


def special_ids(d: dict[str, Any]) -> dict[str, Any]:
    """bos_token_id, eos_token_id (an int, a list of ints, or None) and pad_token_id, with the class defaults."""
    model_type = d.get("model_type", "llama")
    defaults = _DEFAULTS.get(model_type, _DEFAULTS["llama"])
    return {"bos_token_id": d.get("bos_token_id", defaults["bos_token_id"]),
            "eos_token_id": d.get("eos_token_id", defaults["eos_token_id"]),
            "pad_token_id": d.get("pad_token_id")}


def gpt_config_from_hf(d: dict[str, Any], name: str = "hf") -> GPTConfig:
    """`GPTConfig` for a llama/mistral/qwen2 config.json mapping; PlinthError naming the field GPT cannot represent."""
    if not isinstance(d, dict):
        raise PlinthError(f"an HF config must be a JSON object, got {type(d).__name__}")
    model_type = model_type_of(d)
    _check_computation(d, model_type)
    n_head = _positive_int(d, "num_attention_heads")
    d_model = _positive_int(d, "hidden_size")
    n_kv_head = _positive_int(d, "num_key_value_heads", n_head)
    head_dim = _positive_int(d, "head_dim", d_model // n_head if d_model >= n_head else None)
    if n_head % n_kv_head:
        _fail("num_key_value_heads", f"{n_kv_head} does not divide num_attention_heads {n_head}")
    if head_dim % 2:
        _fail("head_dim", f"{head_dim} must be even for rotary embeddings")
    rope_theta, rope_scaling = rope_from_hf(d)
    norm_eps = d.get("rms_norm_eps", _DEFAULT_NORM_EPS)
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
        _fail("rms_norm_eps", f"must be a positive number, got {norm_eps!r}")
    # Qwen2 always has q/k/v biases and no o_proj bias; Llama's attention_bias puts biases on all four.
    llama_bias = model_type == "llama" and bool(d.get("attention_bias", False))
    try:
        return GPTConfig(
            name=name, vocab_size=_positive_int(d, "vocab_size"), n_layer=_positive_int(d, "num_hidden_layers"),
            n_head=n_head, n_kv_head=n_kv_head, d_model=d_model, head_dim=head_dim,
            d_ff=_positive_int(d, "intermediate_size"),
            seq_len=_positive_int(d, "max_position_embeddings", _DEFAULTS[model_type]["max_position_embeddings"]),
            rope_theta=rope_theta, rope_scaling=rope_scaling, norm_eps=float(norm_eps),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=llama_bias, qkv_bias=model_type == "qwen2",
        )
    except PlinthError as e:
        raise PlinthError(str(e).removeprefix("model config: ")) from None


def _rope_parameters(config: GPTConfig) -> dict[str, Any]:
    return {**(config.rope_scaling or {"rope_type": "default"}), "rope_theta": float(config.rope_theta)}


def hf_config_from_gpt(config: GPTConfig, bos_token_id: int | None = None,
                       eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """A config.json mapping transformers builds the same model from: Qwen2 for q/k/v-only biases, else Llama.

    v5 style (`rope_parameters`), plus a top-level `rope_theta` (and `rope_scaling` when RoPE is scaled) so transformers
    v4 readers build the same rotary embedding; v5 accepts and ignores the duplicates. Special ids default to None
    (LlamaConfig's own defaults, 1 and 2, are Llama-2's and would be wrong for another tokenizer).
    """
    qwen2 = config.qkv_bias and not config.attention_bias
    if config.qkv_bias and config.attention_bias:
        raise PlinthError("attention_bias and qkv_bias are both set; no Hugging Face architecture has that layout")
    hf: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "rope_parameters": _rope_parameters(config),
        "rope_theta": float(config.rope_theta),
    }
    if config.rope_scaling:
        hf["rope_scaling"] = dict(config.rope_scaling)
    if qwen2:
        return {**hf, "use_sliding_window": False, "sliding_window": None}
    return {**hf, "attention_bias": config.attention_bias, "mlp_bias": False}
