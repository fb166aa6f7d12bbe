"""Byte-level BPE tokenizers <-> GGUF tokenizer metadata (`tokenizer.ggml.*`).

A GGUF file carries no `tokenizer.json`: it stores the vocabulary, merges, token types and special ids as
metadata under llama.cpp's key names. `tokenizer_json_from_gguf` rebuilds a `tokenizers` JSON from them that
gives the same ids as transformers' GGUF tokenizer; `gguf_tokenizer_metadata` goes the other way for the writer.

Reading handles byte-level BPE (`tokenizer.ggml.model` "gpt2") and SentencePiece BPE ("llama"); writing only
byte-level BPE, the kind Plinth trains. Anything else is refused with a one-line PlinthError naming the file.

The bos/eos/unk/pad ids are parsed from the metadata by `plinth.models.gguf.special_token_ids` and passed in.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from plinth.common import PlinthError

# llama.cpp's token types (gguf.TokenType), spelled out so this module needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes for the `tokenizer.ggml.pre` names whose vocabularies were trained on them. These are the
# patterns the models' own tokenizer.json files use (and llama.cpp hard-codes per pre name).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# pre name -> split regex, or None for GPT-2's own regex inside the ByteLevel pre-tokenizer.
# "smollm" maps to plain GPT-2 splitting to match transformers' GGUF tokenizer; llama.cpp (and SmolLM's
# tokenizer.json) additionally split digits one by one, which differs on e.g. "  123" (see the report).
PRE_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "gpt-2": None,
    "smollm": None,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:  # control bytes, space, etc. get the code points after 255, in byte order
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _spell(token: str, alphabet: set[str]) -> str:
    """A token in byte-level spelling; tokens stored as raw text (outside the alphabet) are re-spelled."""
    if set(token) <= alphabet:
        return token
    table = byte_alphabet()
    return "".join(table[b] for b in token.encode("utf-8"))


def _fail(path: str, message: str) -> None:
    raise PlinthError(f"{path}: {message}")


def _pre_tokenizer(pre: str, path: str) -> pre_tokenizers.PreTokenizer:
    if pre not in PRE_SPLITS:
        _fail(path, f"tokenizer.ggml.pre {pre!r} is not supported (known: {', '.join(sorted(PRE_SPLITS))})")
    split = PRE_SPLITS[pre]
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _post_processor(tokens: list[str], bos: int | None, eos: int | None, add_bos: bool, add_eos: bool) -> dict:
    """TemplateProcessing JSON adding BOS/EOS around each sequence, as transformers builds it for a GGUF.

    Written as JSON rather than through `processors.TemplateProcessing("tok:0 $A:0")` because that string form
    cannot carry tokens containing spaces or colons.
    """
    head = [bos] if add_bos and bos is not None else []
    tail = [eos] if add_eos and eos is not None else []

    def piece(index: int | None, type_id: int) -> dict:
        if index is None:
            return {"Sequence": {"id": "A" if type_id == 0 else "B", "type_id": type_id}}
        return {"SpecialToken": {"id": tokens[index], "type_id": type_id}}

    def sequence(type_id: int) -> list[dict]:
        return [piece(i, type_id) for i in head] + [piece(None, type_id)] + [piece(i, type_id) for i in tail]

    specials = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for i in head + tail}
    return {
        "type": "TemplateProcessing",
        "single": sequence(0),
        "pair": sequence(0) + sequence(1),
        "special_tokens": specials,
    }


def _split_merges(merges: list[str], path: str) -> list[tuple[str, str]]:
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            _fail(path, f"tokenizer.ggml.merges entry {merge!r} is not two tokens separated by one space")
        pairs.append((parts[0], parts[1]))
    return pairs


def _added_tokens(
    tokens: list[str], types: list[int], vocab: dict[str, int], ids: dict[str, int | None], byte_level: bool
) -> tuple[list[AddedToken], list[AddedToken]]:
    """(special, plain) added tokens, which the tokenizer matches whole before splitting text.

    As transformers does for a GGUF: control tokens are special, user-defined ones plain, and the bos/eos/unk/pad
    tokens are special whatever their type (plus "<|endoftext|>" for byte-level vocabularies, GPT2Tokenizer's
    default special token). A token whose spelling is not in the vocabulary is skipped: for byte-level that is a
    control token llama.cpp mislabelled, and transformers would append it past the model's vocabulary.
    """
    wanted = {tokens[i] for i in ids.values() if i is not None} | ({"<|endoftext|>"} if byte_level else set())
    special, plain = [], []
    for token, kind in zip(tokens, types):
        if token not in vocab:
            continue
        if kind == CONTROL or token in wanted:
            special.append(AddedToken(token, normalized=False, special=True))
            wanted.discard(token)
        elif kind == USER_DEFINED:
            plain.append(AddedToken(token, normalized=False, special=False))
    return special, plain


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary, in the order transformers derives them.

    Every way to cut a token into two vocabulary pieces is a merge ranked by the token's score (best first);
    ties go to longer left, then longer right pieces, then vocabulary order.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    score_of = dict(zip(tokens, scores))
    ranked = []
    for token, score in score_of.items():
        cuts = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        cuts.sort(key=lambda cut: (vocab[cut[0]], vocab[cut[1]]))
        ranked += [(left, right, score) for left, right in cuts]
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: equal keys keep their order
    return [(left, right) for left, right, _ in ranked]


def _vocabulary(meta: dict[str, Any], path: str) -> tuple[list[str], list[int]]:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        _fail(path, "tokenizer metadata lacks tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        _fail(path, f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    return tokens, types


def _byte_level_model(meta: dict[str, Any], tokens: list[str], path: str) -> tuple[Tokenizer, dict[str, int]]:
    """GPT-2 style byte-level BPE ("gpt2"): the file's merges and the pre-tokenizer its pre name implies."""
    if meta.get("tokenizer.ggml.merges") is None:
        _fail(path, "byte-level tokenizer metadata lacks tokenizer.ggml.merges")
    alphabet = set(byte_alphabet().values())
    vocab = {_spell(token, alphabet): index for index, token in enumerate(tokens)}
    merges = _split_merges(meta["tokenizer.ggml.merges"], path)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), path)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, vocab


def _sentencepiece_model(meta: dict[str, Any], tokens: list[str], path: str) -> tuple[Tokenizer, dict[str, int]]:
    """SentencePiece BPE with byte fallback ("llama"), built as transformers' LlamaTokenizer builds it.

    Like transformers, this always prepends "▁" to the first word (ignoring tokenizer.ggml.add_space_prefix) and
    derives the merges from the scores when the file has none.
    """
    if meta.get("tokenizer.ggml.pre", "default") != "default":
        _fail(path, f"tokenizer.ggml.pre {meta['tokenizer.ggml.pre']!r} with a SentencePiece vocabulary")
    if meta.get("tokenizer.ggml.merges") is not None:
        merges = _split_merges(meta["tokenizer.ggml.merges"], path)
    elif len(meta.get("tokenizer.ggml.scores") or []) == len(tokens):
        merges = merges_from_scores(tokens, meta["tokenizer.ggml.scores"])
    else:
        _fail(path, "SentencePiece tokenizer metadata lacks tokenizer.ggml.scores (one per token) and merges")
    vocab = {token: index for index, token in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer, vocab


def tokenizer_json_from_gguf(meta: dict[str, Any], path: str, ids: dict[str, int | None]) -> str | None:
    """A `tokenizers` JSON string rebuilt from `tokenizer.ggml.*` metadata, or None if the file has none.

    Handles byte-level BPE ("gpt2") and SentencePiece BPE ("llama") vocabularies, giving the same ids as
    `AutoTokenizer.from_pretrained(dir, gguf_file=...)`; BOS is added by default only for SentencePiece. `ids` are the
    bos/eos/unk/pad ids (`plinth.models.gguf.special_token_ids`).
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind not in ("gpt2", "llama"):
        _fail(path, f"tokenizer.ggml.model {kind!r} is not supported (expected 'gpt2' or 'llama')")
    tokens, types = _vocabulary(meta, path)
    build = _byte_level_model if kind == "gpt2" else _sentencepiece_model
    tokenizer, vocab = build(meta, tokens, path)
    special, plain = _added_tokens(tokens, types, vocab, ids, byte_level=kind == "gpt2")
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)
    # llama.cpp (and transformers) add BOS to SentencePiece vocabularies unless the file says otherwise
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    spec = json.loads(tokenizer.to_str())
    spec["post_processor"] = _post_processor(tokens, ids["bos"], ids["eos"], add_bos, add_eos)
    return Tokenizer.from_str(json.dumps(spec)).to_str()  # round trip through the library validates the JSON


# ---------------------------------------------------------------------------------------------------------
# tokenizer.json -> GGUF metadata (for the writer)


def _pre_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """The llama.cpp pre name whose splitting matches this tokenizer.json pre-tokenizer."""
    if pre_tokenizer is None:
        raise PlinthError("tokenizer has no pre-tokenizer; only byte-level BPE tokenizers can be written to GGUF")
    if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        return "gpt2"
    parts = pre_tokenizer.get("pretokenizers") or []
    if pre_tokenizer.get("type") == "Sequence" and len(parts) == 2 and parts[1].get("type") == "ByteLevel":
        first = parts[0]
        if first.get("type") == "Digits" and first.get("individual_digits") and parts[1].get("use_regex", True):
            return "smollm"  # SmolLM's own tokenizer.json: digits one by one, then GPT-2 splitting
        regex = (first.get("pattern") or {}).get("Regex")
        if first.get("type") == "Split" and not parts[1].get("use_regex", True):
            for name in ("llama-bpe", "qwen2"):
                if PRE_SPLITS[name] == regex:
                    return name
    raise PlinthError(f"tokenizer pre-tokenizer {json.dumps(pre_tokenizer)[:120]} has no llama.cpp pre name")


def _token_list(model: dict[str, Any], added: list[dict[str, Any]], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with their llama.cpp types, padded to `vocab_size` with unused [PADn] entries."""
    by_id: dict[int, tuple[str, int]] = {index: (token, NORMAL) for token, index in model["vocab"].items()}
    for entry in added:
        by_id[entry["id"]] = (entry["content"], CONTROL if entry.get("special") else USER_DEFINED)
    size = max(vocab_size, max(by_id) + 1)
    if size > vocab_size:
        raise PlinthError(f"tokenizer has {size} tokens but the model's vocab_size is {vocab_size}")
    tokens, types = [], []
    for index in range(size):
        # llama.cpp pads a vocabulary smaller than the embedding matrix the same way
        token, kind = by_id.get(index, (f"[PAD{index}]", UNUSED))
        tokens.append(token)
        types.append(kind)
    return tokens, types


def adds_bos(post_processor: dict[str, Any] | None, bos_token: str | None) -> bool:
    """Whether encoding prepends BOS: a TemplateProcessing (possibly inside a Sequence) starting with it."""
    if not post_processor or bos_token is None:
        return False
    if post_processor.get("type") == "Sequence":
        return any(adds_bos(p, bos_token) for p in post_processor.get("processors", []))
    single = post_processor.get("single") or []
    first = single[0] if single else {}
    return post_processor.get("type") == "TemplateProcessing" and first.get("SpecialToken", {}).get("id") == bos_token


def gguf_tokenizer_metadata(
    tokenizer_json: str, vocab_size: int, special_ids: dict[str, int | None], pre: str | None = None
) -> dict[str, Any]:
    """`tokenizer.ggml.*` metadata for a byte-level BPE tokenizer.json (keys -> Python values).

    `special_ids` holds bos/eos/unk/pad ids (None to omit); `pre` overrides the inferred llama.cpp pre name.
    Raises PlinthError for tokenizers GGUF's "gpt2" model cannot describe.
    """
    spec = json.loads(tokenizer_json)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise PlinthError("tokenizer is not byte-level BPE; only that kind can be written as a GGUF 'gpt2' tokenizer")
    tokens, types = _token_list(model, spec.get("added_tokens") or [], vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    bos = special_ids.get("bos")
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre or _pre_name(spec.get("pre_tokenizer")),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_bos_token": adds_bos(spec.get("post_processor"), tokens[bos] if bos is not None else None),
    }
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    for name, key in keys.items():
        if special_ids.get(name) is not None:
            meta[f"tokenizer.ggml.{key}"] = int(special_ids[name])
    return meta
