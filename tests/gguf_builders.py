"""Builders for the GGUF/HF tests: tiny tokenizers trained in-process and tiny GGUF files written with gguf's writer.

Everything here is independent of the module under test (its own llama.cpp permutation, its own metadata
writing), so the tests compare two implementations rather than one with itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It is a truth universally acknowledged, that a single man "
    "in possession of a good fortune, must be in want of a wife. We'll see; they'd agree, wouldn't they?",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "for i in range(10):\n\tprint(i, fibonacci(i))  # tabs and spaces\n",
    "Café, naïve, résumé, São Paulo, Zürich, Ελληνικά, Москва. 日本語のテキスト、中文文本。한국어 텍스트.",
    "مرحبا بالعالم، هذا نص عربي قصير. שלום עולם. नमस्ते दुनिया.",
    "Emoji: 😀 👍🏽 🇫🇷 👨‍👩‍👧‍👦 ✨ 🚀. Numbers: 0 12 345 6789 3.14159 1,000,000 2026-11-28.",
    "   leading spaces, trailing spaces   \n\n\n\t\ttabs\r\nwindows lines\r\n",
] * 8

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged.",
    "def f(x):\n    if x > 0:\n        return x * 2\n\treturn -x  # tab\n",
    "class A:\n    def __init__(self):\n        self.x = {'a': [1, 2, 3]}\n\n\n",
    "Café naïve résumé — São Paulo, Zürich, Ελληνικά, Москва",
    "日本語のテキストと中文文本。한국어도",
    "مرحبا بالعالم، هذا نص عربي",
    "emoji: 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 ✨🚀",
    "   leading spaces, trailing   \n\n\n\t\t tabs\r\nwindows line\r\n",
    "digits 0 12 345 6789 3.14159 1,000,000 2026-11-28  123   4567",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|> <|im_start|>",
    "I'm you're we'll they'd DON'T Can't",
    "",
    " ",
    "\n",
    "a" * 60,
    "x=1;y=2\n\n\n\n    \n \t \n",
    "<think>reasoning</think> after",
]


def train_tokenizer(pre: str = "gpt2", vocab_size: int = 400, user_defined: tuple[str, ...] = ()) -> Tokenizer:
    """A byte-level BPE trained on CORPUS with the given llama.cpp pre-tokenizer style."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    if pre == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        split = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}[pre]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(False, use_regex=False)]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if user_defined:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])
    return tokenizer


def train_sentencepiece(user_defined: tuple[str, ...] = ("<think>",)) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, llama.cpp token types) of a SentencePiece BPE with byte fallback trained on CORPUS,
    typed the way llama.cpp's converter types them."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=list(user_defined),
        control_symbols=["<|im_start|>"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]

    def kind(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if pieces[i] in user_defined:  # the Python API has no IsUserDefined
            return 4
        return 6 if sp.is_byte(i) else 1

    return pieces, scores, [kind(i) for i in range(len(pieces))]


def gguf_vocab(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as llama.cpp's converter writes them for a byte-level BPE."""
    spec = json.loads(tokenizer.to_str())
    by_id = {i: (t, 1) for t, i in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        by_id[added["id"]] = (added["content"], 3 if added["special"] else 4)
    tokens = [by_id[i][0] for i in range(len(by_id))]
    types = [by_id[i][1] for i in range(len(by_id))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows, for n_head heads in this projection."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    spec = dict(
        arch="llama",
        n_layer=2,
        d_model=64,
        n_head=4,
        n_kv_head=2,
        d_ff=128,
        vocab=None,
        tied=True,
        qkv_bias=False,
        o_bias=False,
        ctx=256,
        theta=10000.0,
        eps=1e-5,
    )
    spec.update(overrides)
    return spec


def random_hf_tensors(spec: dict[str, Any], vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under HF Llama names (norms near 1, like trained ones)."""
    rng = np.random.default_rng(seed)
    d, ff = spec["d_model"], spec["d_ff"]
    hd = d // spec["n_head"] if "head_dim" not in spec else spec["head_dim"]
    q_out, kv_out = spec["n_head"] * hd, spec["n_kv_head"] * hd
    normal = lambda *shape: rng.normal(0, 0.05, shape).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": normal(vocab, d), "model.norm.weight": 1 + normal(d)}
    if not spec["tied"]:
        t["lm_head.weight"] = normal(vocab, d)
    for i in range(spec["n_layer"]):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": 1 + normal(d),
            p + "post_attention_layernorm.weight": 1 + normal(d),
            p + "self_attn.q_proj.weight": normal(q_out, d),
            p + "self_attn.k_proj.weight": normal(kv_out, d),
            p + "self_attn.v_proj.weight": normal(kv_out, d),
            p + "self_attn.o_proj.weight": normal(d, q_out),
            p + "mlp.gate_proj.weight": normal(ff, d),
            p + "mlp.up_proj.weight": normal(ff, d),
            p + "mlp.down_proj.weight": normal(d, ff),
        }
        if spec["qkv_bias"]:
            t |= {
                p + "self_attn.q_proj.bias": normal(q_out),
                p + "self_attn.k_proj.bias": normal(kv_out),
                p + "self_attn.v_proj.bias": normal(kv_out),
            }
        if spec["o_bias"]:
            t[p + "self_attn.o_proj.bias"] = normal(d)
    return t


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:])]}"


def random_blocks(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random raw blocks of a type gguf cannot quantize (K-quants), with finite fp16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = shape[0] * shape[1] // block
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, (n_blocks, 2)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        raw[:, -2:] = scales[:, :2]  # d is the last field of a Q6_K block
    elif qtype == Q.Q2_K:
        raw[:, -4:] = scales  # d and dmin end a Q2_K block
    else:
        raw[:, 0:4] = scales  # d and dmin lead a Q4_K / Q5_K block
    return raw.reshape(shape[0], -1)


def encode(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, Q | None]:
    """Array to hand GGUFWriter.add_tensor, and its raw type (None for plain F32/F16)."""
    if qtype == Q.F32:
        return w, None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in (Q.Q2_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):  # types gguf cannot quantize
        return random_blocks(qtype, w.shape, rng), qtype
    return quantize(w, qtype), qtype


def write_tiny_gguf(
    path: Path,
    spec: dict[str, Any],
    tokenizer: Tokenizer | None = None,
    type_for: Callable[[str], Q] = lambda name: Q.F32,
    extra_meta: Callable[[GGUFWriter], None] | None = None,
    skip_keys: tuple[str, ...] = (),
    seed: int = 0,
    pre: str = "gpt2",
    sentencepiece: tuple[list[str], list[float], list[int]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Write a tiny Llama-family GGUF the way llama.cpp's converter lays it out.

    Returns (source HF tensors, HF tensors a correct reader must produce: the stored values dequantized, with
    llama's q/k permutation undone).
    """
    tokens, types, merges = gguf_vocab(tokenizer) if tokenizer else ([f"t{i}" for i in range(96)], [1] * 96, [])
    if sentencepiece:
        tokens, _, types = sentencepiece
    vocab = spec["vocab"] or len(tokens)
    source = random_hf_tensors(spec, vocab, seed)
    rng = np.random.default_rng(seed + 1)
    w = GGUFWriter(path, spec["arch"])
    arch = spec["arch"]
    meta = {
        f"{arch}.block_count": spec["n_layer"],
        f"{arch}.context_length": spec["ctx"],
        f"{arch}.embedding_length": spec["d_model"],
        f"{arch}.feed_forward_length": spec["d_ff"],
        f"{arch}.attention.head_count": spec["n_head"],
        f"{arch}.attention.head_count_kv": spec["n_kv_head"],
    }
    for key, value in meta.items():
        if key not in skip_keys:
            w.add_uint32(key, value)
    if f"{arch}.attention.layer_norm_rms_epsilon" not in skip_keys:
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", spec["eps"])
    w.add_float32(f"{arch}.rope.freq_base", spec["theta"])
    if tokenizer is not None:
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", pre)
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.token_type", types)
        w.add_array("tokenizer.ggml.merges", merges)
        w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("<|im_start|>"))
        w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
        w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("<|endoftext|>"))
        w.add_bool("tokenizer.ggml.add_bos_token", False)
    if sentencepiece is not None:  # as llama.cpp writes one: scores, no merges, BOS added by default
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.scores", sentencepiece[1])
        w.add_array("tokenizer.ggml.token_type", types)
        w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
        w.add_uint32("tokenizer.ggml.bos_token_id", 1)
        w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    if extra_meta:
        extra_meta(w)
    expected = {}
    for hf, value in source.items():
        name = gguf_name(hf)
        stored = value
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            stored = llama_cpp_permute(value, spec["n_head"] if ".attn_q." in name else spec["n_kv_head"])
        qtype = Q.F32 if value.ndim == 1 else type_for(name)
        array, raw = encode(stored, qtype, rng)
        w.add_tensor(name, array, raw_dtype=raw)
        back = dequantize(array, raw) if raw is not None else array.astype(np.float32)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            back = llama_cpp_unpermute(back, spec["n_head"] if ".attn_q." in name else spec["n_kv_head"])
        expected[hf] = np.asarray(back, dtype=np.float32).reshape(value.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return source, expected


# ---------------------------------------------------------------------------------------------------------
# Adapters: Plinth's GGUF API in the shape these tests were first written against (one call that reads or
# writes model, tokenizer and chat template together), built the way plinth/pipelines/convert.py builds it.


class Read:
    """read_gguf's result plus the rebuilt tokenizer JSON and special-token strings."""

    def __init__(self, path: Path) -> None:
        from plinth.data.gguf_tokenizer import tokenizer_json_from_gguf
        from plinth.models.gguf import read_gguf

        model = read_gguf(path)
        self.model, self.path = model, path
        self.hf_config, self.config, self.tensors = model.hf_config, model.config, model.tensors
        self.metadata, self.tensor_types, self.chat_template = model.metadata, model.tensor_types, model.chat_template
        self.tokenizer_json = tokenizer_json_from_gguf(model.metadata, str(path), model.special_ids)
        self.tokenizer_pre = model.metadata.get("tokenizer.ggml.pre")
        tokens = model.metadata.get("tokenizer.ggml.tokens") or []
        ids = model.special_ids
        self.bos_token = tokens[ids["bos"]] if ids["bos"] is not None else None
        self.eos_token = tokens[ids["eos"]] if ids["eos"] is not None else None


def read(path: Path) -> Read:
    return Read(Path(path))


def write(path: Path, hf_config: dict[str, Any], tensors: dict, tokenizer_json: str | None,
          chat_template: str | None = None, dtype: str = "f32", tokenizer_pre: str | None = None) -> Path:
    """write_gguf from an HF config dict and a tokenizer.json string."""
    from plinth.data.gguf_tokenizer import gguf_tokenizer_metadata
    from plinth.models.gguf import write_gguf
    from plinth.models.hf import gpt_config_from_hf, special_ids

    config = gpt_config_from_hf(hf_config)
    meta = None
    if tokenizer_json is not None:
        ids = special_ids(hf_config)
        eos = ids["eos_token_id"]
        eos = eos[0] if isinstance(eos, list) else eos
        meta = gguf_tokenizer_metadata(tokenizer_json, config.vocab_size, {"bos": ids["bos_token_id"], "eos": eos,
                                       "unk": None, "pad": ids["pad_token_id"]}, tokenizer_pre)
    return write_gguf(path, config, tensors, meta, chat_template, dtype)
