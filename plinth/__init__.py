"""Plinth: a workbench for foundation models.

The Python API mirrors the CLI verbs; each takes the same typed config the CLI builds:

    import plinth
    from plinth.config import PretrainConfig
    summary = plinth.pretrain(PretrainConfig())
    lm = plinth.load("runs/quickstart")
    print(lm.generate("Fellow citizens", max_new_tokens=40))
    print(plinth.evaluate(lm, "my_text.txt"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Imported on first use: `import plinth` stays fast, and the CLI's --help does not pay for torch.
_LAZY = {
    "pretrain": ("plinth.training.lm", "pretrain"),
    "quickstart": ("plinth.training.quickstart", "quickstart"),
    "prepare": ("plinth.data.prepare", "prepare"),
    "train_tokenizer": ("plinth.data.tokenizer", "train_tokenizer"),
    "tokenize": ("plinth.data.shards", "write_shards"),
    "data_pipeline": ("plinth.data.pipeline", "run_pipeline"),
    "load": ("plinth.pipelines", "load"),
    "finetune_sft": ("plinth.training.sft", "finetune_sft"),
    "finetune_continue": ("plinth.training.continual", "finetune_continue"),
    "adapt_online": ("plinth.training.online", "adapt_online"),
    "finetune_classify": ("plinth.training.textclf", "finetune_classify"),
    "adapt_compare": ("plinth.training.compare", "compare"),
    "TextClassifierPipeline": ("plinth.pipelines.classifier", "TextClassifierPipeline"),
    "merge_adapter": ("plinth.pipelines.convert", "merge_adapter"),
    "LanguageModel": ("plinth.pipelines.text", "LanguageModel"),
    "Tokenizer": ("plinth.data.tokenizer", "Tokenizer"),
    "PlinthError": ("plinth.config", "PlinthError"),
    # Images, CLIP, captioning
    "prepare_images": ("plinth.data.image_prep", "prepare_images"),
    "train_classifier": ("plinth.training.classify", "train_classifier"),
    "train_clip": ("plinth.training.contrastive", "train_clip"),
    "train_captioner": ("plinth.training.caption", "train_captioner"),
    "quickstart_clip": ("plinth.training.quickstart_clip", "quickstart_clip"),
    "ZeroShotClassifier": ("plinth.multimodal.zeroshot", "ZeroShotClassifier"),
    "scale_sweep": ("plinth.training.scale", "sweep"),
    "scale_predict": ("plinth.training.scale", "check_prediction"),
}

__all__ = sorted([*_LAZY, "evaluate", "config"])

if TYPE_CHECKING:
    from plinth.config import PlinthError  # noqa: F401
    from plinth.data.pipeline import run_pipeline as data_pipeline  # noqa: F401
    from plinth.data.prepare import prepare  # noqa: F401
    from plinth.data.shards import write_shards as tokenize  # noqa: F401
    from plinth.data.tokenizer import Tokenizer, train_tokenizer  # noqa: F401
    from plinth.pipelines import load  # noqa: F401
    from plinth.pipelines.classifier import TextClassifierPipeline  # noqa: F401
    from plinth.pipelines.convert import merge_adapter  # noqa: F401
    from plinth.pipelines.text import LanguageModel  # noqa: F401
    from plinth.training.compare import compare as adapt_compare  # noqa: F401
    from plinth.training.continual import finetune_continue  # noqa: F401
    from plinth.training.lm import pretrain  # noqa: F401
    from plinth.training.online import adapt_online  # noqa: F401
    from plinth.training.quickstart import quickstart  # noqa: F401
    from plinth.training.scale import check_prediction as scale_predict  # noqa: F401
    from plinth.training.scale import sweep as scale_sweep  # noqa: F401
    from plinth.training.sft import finetune_sft  # noqa: F401
    from plinth.training.textclf import finetune_classify  # noqa: F401


def __getattr__(name: str) -> Any:
    import importlib

    if name == "evaluate":
        return importlib.import_module("plinth.evaluate")
    if name == "config":
        return importlib.import_module("plinth.config")
    if name not in _LAZY:
        raise AttributeError(f"module 'plinth' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
