"""EleutherAI's lm-evaluation-harness running a Plinth model: `lm_eval --model plinth --model_args path=...`.

lm-eval (0.4.13) finds models only in its own registry and has no plugin entry point for them, so the model has to be
registered before its command line runs. Two ways, both offered:

    plinth-lm-eval --model plinth --model_args path=models/smollm2 --tasks mytask --include_path tasks/
    python -m plinth.evaluate.lm_eval_adapter --model plinth --model_args path=models/smollm2 ...

and from Python, importing this module registers "plinth" for `lm_eval.simple_evaluate(model="plinth", ...)`.
Needs the optional extra: `pip install "plinth[eval]"` (lm-eval is heavy: datasets, pyarrow, evaluate, ...).

The three request types map onto Plinth's own scorer (`scoring.py`, shared context forward passes) and generation
loop, so `plinth eval tasks` and lm-eval through this adapter agree on the same data (tested).
"""

from __future__ import annotations

import sys
from typing import Any

from plinth.common import PlinthError


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise PlinthError("lm-eval is not installed: pip install \"plinth[eval]\" (or lm-eval==0.4.13)") from None
    return LM


class PlinthLM(_lm_base()):
    """lm-eval's `LM` interface over a Plinth `LanguageModel` (anything `plinth.load` reads: a model folder, a GGUF
    file, an HF folder, builtin:NAME). `model_args`: path, device (auto), batch_size (16), max_new_tokens (256)."""

    def __init__(self, path: str | None = None, pretrained: str | None = None, device: str | None = "auto",
                 batch_size: int | str | None = 16, max_new_tokens: int | str = 256, lm: Any = None,
                 **_ignored: Any) -> None:
        super().__init__()
        from plinth.pipelines import load

        source = path or pretrained
        if lm is None and not source:
            raise PlinthError("lm-eval --model plinth: give --model_args path=MODEL")
        self.lm = lm if lm is not None else load(source, device=device or "auto")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> the default
        self.max_new_tokens = int(max_new_tokens)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> PlinthLM:
        """lm-eval's constructor path: `--model_args` win over its own `--device`/`--batch_size` defaults."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if str(extra.get("device", "")).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # lm-eval's --device defaults to cuda:0; use what this machine has
                extra.pop("device")
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> PlinthLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @property
    def tokenizer_name(self) -> str:
        return f"plinth-{self.lm.tokenizer.sha256[:16]}"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy?) per request; contexts shared by several requests run once."""
        from plinth.evaluate.scoring import loglikelihoods

        return loglikelihoods(self.lm, [tuple(r.args) for r in requests], self.batch_size)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, in windows of the model's context."""
        from plinth.evaluate.scoring import rolling_loglikelihood

        return [rolling_loglikelihood(self.lm, r.args[0]) for r in requests]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate from each context until one of its `until` strings (or the model's stop tokens)."""
        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            text = "".join(p[0] for p in self.lm.stream_ids(
                [self.lm.encode(context)], max_new_tokens=int(kwargs.get("max_gen_toks", self.max_new_tokens)),
                temperature=temperature, stop=until))
            out.append(text)
        return out


def register() -> None:
    """Put `PlinthLM` in lm-eval's model registry as "plinth" (once; importing this module does it)."""
    from lm_eval.api.registry import model_registry

    if "plinth" not in model_registry:
        model_registry.register("plinth", target="plinth.evaluate.lm_eval_adapter:PlinthLM")


register()


def main() -> None:
    """`plinth-lm-eval`: lm-eval's own command line, with the `plinth` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())


if __name__ == "__main__":
    main()
