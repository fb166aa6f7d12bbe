"""The same stages on an existing multi-machine engine: datatrove's executors. LocalPipelineExecutor runs them here
(`--engine datatrove`, tested); SlurmPipelineExecutor and RayPipelineExecutor run the very same steps across machines
(`make_executors(cfg, "slurm", time=..., partition=...)`), with a run folder on storage every machine sees.

No scheduler of our own: each stage is a datatrove `PipelineStep` whose rank processes inputs[rank::world_size] with
the functions of `pipeline.py`, and stages are chained with datatrove's `depends`. datatrove's completion files
(work/datatrove/<stage>/completions/<rank>) skip finished ranks on a rerun; our per-input markers skip finished inputs
inside an interrupted rank, so the outputs are identical either way. Documents do not flow through datatrove's
`Document` objects: each step reads and writes the run folder, which is what makes a rerun byte-identical and lets
any executor run the stages.
"""

from __future__ import annotations

import time
from pathlib import Path

from plinth.common import PlinthError
from plinth.config import DataPipelineConfig
from plinth.data.pipeline import STAGES, plan_inputs

__all__ = ["stage_class", "make_executors", "run_with_datatrove", "EXECUTORS"]

EXECUTORS = {"local": "LocalPipelineExecutor", "slurm": "SlurmPipelineExecutor", "ray": "RayPipelineExecutor"}
PER_INPUT = ("extract", "finalize")


def stage_class() -> type:
    """The datatrove PipelineStep class that runs one Plinth stage (built lazily: datatrove is optional)."""
    try:
        from datatrove.pipeline.base import PipelineStep
    except ImportError:
        raise PlinthError("engine datatrove needs the datatrove package: pip install 'plinth[web]'") from None

    class PlinthDataStage(PipelineStep):
        """One stage of `plinth data pipeline` as a datatrove step (no documents in or out)."""

        name = "plinth data stage"
        type = "PLINTH"

        def __init__(self, cfg: DataPipelineConfig, stage: str):
            super().__init__()
            self.cfg, self.stage = cfg, stage

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            from plinth.data import pipeline as p

            cfg = self.cfg
            if self.stage in PER_INPUT:
                p.check_fingerprint(cfg)
                for task in p.plan_inputs(cfg)[rank::world_size]:
                    if self.stage == "extract":
                        self.stat_update("documents_out", value=p.extract_input(task, cfg)["documents_out"])
                    else:
                        self.stat_update("tokens", value=p.finalize_input(task, cfg)["tokens"])
            elif rank == 0:
                {"dedup": p.run_dedup, "mix": p.run_mix, "report": p.run_report}[self.stage](cfg)
            yield from ()

    return PlinthDataStage


def make_executors(cfg: DataPipelineConfig, kind: str = "local", tasks: int | None = None,
                   workers: int | None = None, stages: tuple[str, ...] = STAGES, **executor_kwargs) -> list:
    """One datatrove executor per stage, each depending on the previous one; `.run()` the last to run them all.

    kind: local, slurm (pass time=, partition=, ... as datatrove's SlurmPipelineExecutor takes them) or ray.
    tasks: ranks of the per-input stages (default: one per input archive); the global stages run as one task.
    """
    if kind not in EXECUTORS:
        raise PlinthError(f"engine: unknown executor kind {kind!r} (use {', '.join(EXECUTORS)})")
    Stage = stage_class()
    import datatrove.executor as executors_module

    cls = getattr(executors_module, EXECUTORS[kind])
    n_inputs = max(1, len(plan_inputs(cfg)))
    logs = Path(cfg.out) / "work" / "datatrove"
    executors: list = []
    for stage in stages:
        kw = dict(executor_kwargs)
        if kind == "local":
            kw.setdefault("workers", workers or cfg.workers)
        n = min(tasks or n_inputs, n_inputs) if stage in PER_INPUT else 1
        executors.append(cls(pipeline=[Stage(cfg, stage)], tasks=n, logging_dir=str(logs / stage),
                             depends=executors[-1] if executors else None, **kw))
    return executors


def run_with_datatrove(cfg: DataPipelineConfig, workers: int | None = None, tasks: int | None = None,
                       stages: tuple[str, ...] = STAGES) -> dict:
    """Run the stages on datatrove's LocalPipelineExecutor; returns the wall seconds (one figure for all)."""
    from plinth.data.pipeline import check_fingerprint

    check_fingerprint(cfg)
    t0 = time.perf_counter()
    make_executors(cfg, "local", tasks, workers, stages)[-1].run()
    return {"datatrove": round(time.perf_counter() - t0, 3)}
