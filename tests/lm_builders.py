"""A language model whose greedy output the test decides: a character bigram table wired into a real `GPT`.

Every block's output projections are zero, so each block passes the residual stream through unchanged; the embedding
is one-hot (d_model >= vocabulary), the final RMSNorm turns it into sqrt(d_model) * one-hot, and `lm_head` then reads
one column per current token: logits(next | current) is a table the test writes. Greedy decoding follows the table,
and so does scoring, through the same forward pass, KV cache and padding code as any model.
"""

from __future__ import annotations

import math
from pathlib import Path

import tokenizers
import torch
from tokenizers import AddedToken, decoders, models

from plinth.artifacts import TOKENIZER, write_manifest
from plinth.data.tokenizer import Tokenizer
from plinth.models import GPT, preset
from plinth.models.io import save_model
from plinth.pipelines.text import LanguageModel, TextSettings

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'\"-\n"


def char_tokenizer() -> Tokenizer:
    """One id per character of ALPHABET, byte fallback for the rest, and the three chat special tokens first."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return Tokenizer(tok)


def bigram_lm(table: dict[str, str], strength: float = 12.0, seq_len: int = 256) -> LanguageModel:
    """A LanguageModel whose most likely next token after token `a` is `table[a]` (tokens as strings: characters or
    special tokens); after a token with no entry every token is equally likely. ChatML template, stops at
    <|im_end|> (and <|endoftext|>)."""
    tok = char_tokenizer()
    vocab = tok.vocab_size
    d = 32 * math.ceil(vocab / 32)
    model = GPT(preset("test", vocab_size=vocab, d_model=d, n_head=4, n_kv_head=4, seq_len=seq_len,
                       tie_embeddings=False)).eval()
    ids = {t: tok.backend.token_to_id(t) for t in (*table, *table.values())}
    assert None not in ids.values(), f"tokens outside the vocabulary: {[t for t, i in ids.items() if i is None]}"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, d))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, d)
        for a, b in table.items():
            head[ids[b], ids[a]] = strength / math.sqrt(d)
        model.lm_head.weight.copy_(head)
    settings = TextSettings(bos_token="<|im_start|>", eos_token="<|im_end|>", bos_token_id=1, eos_token_ids=[2],
                            chat_template=CHATML)
    return LanguageModel(model, tok, None, settings)


def save_lm(lm: LanguageModel, folder: Path) -> Path:
    """Write `lm` as a Plinth model folder (weights, config, tokenizer, generation settings, manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(lm.model, folder)
    lm.tokenizer.save(folder / TOKENIZER)
    lm.settings.write(folder)
    write_manifest(folder)
    return folder


def chain(text: str, end: str = "<|im_end|>", start: str = "\n") -> dict[str, str]:
    """Table entries making greedy decoding after `start` spell `text` then `end` (characters must not repeat)."""
    seq = [start, *text, end]
    assert len(set(seq)) == len(seq), "a bigram chain cannot repeat a token"
    return dict(zip(seq, seq[1:]))
