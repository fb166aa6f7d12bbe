"""What `plinth.load` returns: a model together with what it needs to be used (its tokenizer, later its image
transforms), chosen by the `family` in the model's config.json.

This layer sits below evaluate, serve, audit and training, so all of them load models the same way.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from plinth.artifacts import resolve_checkpoint
from plinth.common import PlinthError
from plinth.models.io import read_model_config

# family -> "module:class" of its pipeline; imported on first use. One row per family that can be loaded for use.
PIPELINES: dict[str, str] = {
    "gpt": "plinth.pipelines.text:LanguageModel",
    "cnn": "plinth.pipelines.vision:ImageClassifier",
    "vit": "plinth.pipelines.vision:ImageClassifier",
    "clip": "plinth.pipelines.vision:CLIPPipeline",
    "captioner": "plinth.pipelines.vision:CaptionPipeline",
    "text_classifier": "plinth.pipelines.classifier:TextClassifierPipeline",
}


def pipeline_class(family: str) -> type:
    """The pipeline class that serves models of `family`; PlinthError when the family has none."""
    if family not in PIPELINES:
        raise PlinthError(f"models of family {family!r} cannot be loaded for use yet (known: {', '.join(PIPELINES)})")
    module, name = PIPELINES[family].split(":")
    return getattr(importlib.import_module(module), name)


def load(path: str | os.PathLike, device: str = "auto", adapter: str | os.PathLike | None = None, **kwargs: Any):
    """Load a run (its newest verified checkpoint), a checkpoint or a model folder as the pipeline of its family; or a
    foreign language model as a `LanguageModel`: a GGUF file, a Hugging Face folder, or `builtin:NAME`.

    `adapter`: a LoRA adapter folder trained on this model, applied on top (one base, many adapters, chosen here).
    A damaged newest checkpoint is skipped with a warning. Raises PlinthError naming the folder or file at fault, or
    when the adapter was trained for another base model.
    """
    from plinth.pipelines.convert import foreign_source, load_foreign

    foreign = foreign_source(path)
    if foreign is not None:
        pipe = load_foreign(foreign, device=device)
    else:
        folder = resolve_checkpoint(path)
        config = read_model_config(folder)
        pipe = pipeline_class(type(config).family).from_folder(folder, device=device, **kwargs)
    if adapter:
        from plinth.adapt.lora import load_adapter

        device_now = next(pipe.model.parameters()).device
        load_adapter(pipe.model, adapter)
        pipe.model.to(device_now).eval()
    return pipe


__all__ = ["PIPELINES", "load", "pipeline_class"]
