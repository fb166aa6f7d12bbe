"""EleutherAI's lm-eval running a Plinth model through the adapter agrees with `plinth eval tasks` on a local task.

Skipped when lm-eval is not installed (`pip install "plinth[eval]"`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'plinth[eval]'")

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from plinth.config import EvalTasksConfig  # noqa: E402
from plinth.evaluate.tasks import evaluate_tasks  # noqa: E402
from tests.lm_builders import save_lm  # noqa: E402

YAML = """task: plinth_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 24-question two- to four-choice task in Plinth's schema, and the same data as an lm-eval task folder."""
    root = tmp_path_factory.mktemp("lmeval")
    g = torch.Generator().manual_seed(0)
    words = "red green blue fox dog cat sun moon tree river stone bird".split()
    rows = []
    for i in range(28):
        n = 2 + i % 3
        pick = torch.randperm(len(words), generator=g)[: n + 3].tolist()
        context = f"Q{i}: the {words[pick[0]]} and the {words[pick[1]]} are"
        choices = [f" {words[j]}" for j in pick[3: 3 + n]]
        rows.append({"split": "test" if i < 24 else "train", "context": context, "choices": choices,
                     "answer": int(torch.randint(0, n, (1,), generator=g))})
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("test", "train"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == split))
    (root / "yaml").mkdir()
    (root / "yaml" / "plinth_local.yaml").write_text(YAML.format(test=root / "test.jsonl", train=root / "train.jsonl"))
    return root


@pytest.fixture(scope="module")
def lm():
    from plinth.data.tokenizer import Tokenizer
    from plinth.models import GPT, preset
    from plinth.pipelines.text import LanguageModel
    from tests.gguf_builders import train_tokenizer

    tok = train_tokenizer("gpt2", vocab_size=400)
    torch.manual_seed(1)
    model = GPT(preset("test", vocab_size=tok.get_vocab_size(), seq_len=128, tie_embeddings=False)).eval()
    return LanguageModel(model, Tokenizer(tok))


def test_lm_eval_through_the_adapter_agrees_with_plinth(task, lm, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from plinth.evaluate.lm_eval_adapter import PlinthLM

    ours = evaluate_tasks(EvalTasksConfig(model="-", tasks=[str(task / "task.jsonl")], shots=[0],
                                          out=str(tmp_path / "o"), progress=False), lm=lm)["results"][0]
    result = lm_eval.simple_evaluate(model=PlinthLM(lm=lm), tasks=["plinth_local"], num_fewshot=0,
                                     task_manager=TaskManager(include_path=str(task / "yaml")))
    theirs = result["results"]["plinth_local"]
    assert 0 < ours["acc"] < 1 and ours["n"] == 24
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])


def test_lm_eval_command_line_with_the_plinth_model(task, lm, tmp_path):
    folder = save_lm(lm, tmp_path / "model")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "plinth.evaluate.lm_eval_adapter", "--model", "plinth",
                           "--model_args", f"path={folder},device=cpu", "--tasks", "plinth_local",
                           "--include_path", str(task / "yaml"), "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plinth_local" in proc.stdout and "acc" in proc.stdout
