"""Model families and their I/O: `GPT` (Llama layout), decoding, and saving/loading model folders."""

from plinth.models.generate import generate, generate_tokens, sample_next_token
from plinth.models.gpt import GPT, KVCache, preset_table
from plinth.models.io import load_hf_llama, load_model, save_hf_llama, save_model

__all__ = [
    "GPT",
    "KVCache",
    "generate",
    "generate_tokens",
    "load_hf_llama",
    "load_model",
    "preset_table",
    "sample_next_token",
    "save_hf_llama",
    "save_model",
]
