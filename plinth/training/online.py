"""Online adaptation: watch a folder or a JSONL file, and as documents arrive apply small bounded updates to a
language model, each checked on a held-out anchor set and rolled back when it hurts it.

An update is a few optimizer steps of the shared `train_step` (the next-token loss of `training.lm`, gradient
clipping, AdamW of `training.optim`) on the new documents mixed with replayed rows (a reservoir of rows from earlier
kept updates, and windows of the original training data). Its weight change can be capped in L2 norm. Then the anchor
loss is measured: above `(1 + max_anchor_regression)` times the loss before the update (or `(1 +
max_total_regression)` times the loss at the start, which bounds the drift of many small updates), the weights and the
optimizer state are restored from a snapshot taken before it (bit for bit) and the documents are rejected: rows of
theirs still pending are dropped. Why this is not `train(...)`: a run of `train` has a fixed length and schedule and
never undoes a step; here there is no end, the learning rate is constant, and an accepted step depends on a
measurement after it (docs/decisions.md).

Every update, kept or not, is logged to metrics.jsonl and followed by an atomic checkpoint holding the weights, the
optimizer, the replay buffer and the input cursor (the folder's consumed file names, or the JSONL file's byte offset
after the last consumed line): the cursor moves with the weights or not at all, so a killed process resumes without
losing or repeating input. Writers should add a file to the folder atomically (write it elsewhere or under a hidden
or `.tmp`/`.part` name, then rename it), and append whole lines to the JSONL file (a last line without its newline
waits until it is complete).
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.artifacts import TOKENIZER, latest_verified_checkpoint, locked
from plinth.common import (
    PlinthError,
    atomic_write_json,
    pick_device,
    remove_stale_temp,
    resolve_precision,
    seed_everything,
)
from plinth.config import OnlineConfig, to_dict, validate
from plinth.data.readers import read_texts
from plinth.data.sft import row_messages
from plinth.data.shards import TokenShards
from plinth.evaluate.lm import score_batches, text_windows
from plinth.pipelines import load
from plinth.pipelines.text import LanguageModel
from plinth.runlog import MetricsLog
from plinth.training.checkpoint import restore_checkpoint, save_checkpoint
from plinth.training.lm import IGNORE_INDEX, lm_loss
from plinth.training.optim import make_adamw
from plinth.training.run import Objective, _stop_on_signals, train_step

MAX_DEFAULT_SEQ_LEN = 256
TEXT_SUFFIXES = (".txt", ".md")
SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".swp")

# ----------------------------------------------------------------------------------------------------------------------
# Input: a folder of text files or a JSONL file, read from a cursor that only moves when a checkpoint is written


@dataclass
class Doc:
    """One arrived document: an id for the log, and the row (`{"text": ...}` or a conversation row)."""

    id: str
    row: dict


class Inbox:
    """New documents after a cursor. `read(cursor, limit)` returns (docs, cursor after them, skipped reasons) and
    changes nothing: the caller stores the new cursor with the checkpoint that includes the documents."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            self.kind = "folder"
        elif self.path.suffix == ".jsonl" and self.path.is_file():
            self.kind = "jsonl"
        else:
            raise PlinthError(f"--watch {path}: not a folder or an existing .jsonl file (create it empty to start)")

    def start(self) -> dict:
        return {"files": []} if self.kind == "folder" else {"offset": 0, "line": 0}

    def read(self, cursor: dict, limit: int) -> tuple[list[Doc], dict, dict[str, int]]:
        return self._read_folder(cursor, limit) if self.kind == "folder" else self._read_jsonl(cursor, limit)

    def _read_folder(self, cursor: dict, limit: int):
        done = set(cursor["files"])
        fresh = []
        for p in self.path.iterdir():
            if p.name in done or p.name.startswith(".") or p.suffix in SKIP_SUFFIXES or not p.is_file():
                continue
            try:
                fresh.append((p.stat().st_mtime_ns, p.name, p))
            except OSError:  # removed between listing and stat
                continue
        docs, taken, skipped = [], [], {}
        for _, name, p in sorted(fresh)[:limit]:
            taken.append(name)
            if p.suffix not in TEXT_SUFFIXES:
                skipped["not a .txt/.md file"] = skipped.get("not a .txt/.md file", 0) + 1
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                skipped["unreadable or not UTF-8"] = skipped.get("unreadable or not UTF-8", 0) + 1
                continue
            if text.strip():
                docs.append(Doc(name, {"text": text}))
            else:
                skipped["empty"] = skipped.get("empty", 0) + 1
        return docs, {"files": sorted(done | set(taken))}, skipped

    def _read_jsonl(self, cursor: dict, limit: int):
        offset, line_no = int(cursor["offset"]), int(cursor["line"])
        size = self.path.stat().st_size
        if size < offset:
            raise PlinthError(f"{self.path}: the file is shorter ({size} bytes) than what was already consumed "
                              f"({offset} bytes): it was truncated or replaced; restore it, or start a new --out")
        docs, skipped = [], {}
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(docs) + sum(skipped.values()) < limit:
                raw = f.readline()
                if not raw.endswith(b"\n"):  # end of file, or a line still being written
                    break
                offset += len(raw)
                line_no += 1
                reason = None
                try:
                    row = json.loads(raw.decode("utf-8")) if raw.strip() else None
                except (UnicodeDecodeError, ValueError):
                    row, reason = None, "not valid JSON"
                if row is None and reason is None:
                    continue  # a blank line
                if reason is None:
                    reason = _row_problem(row)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    docs.append(Doc(f"{self.path.name}:{line_no}", row))
        return docs, {"offset": offset, "line": line_no}, skipped


def _row_problem(row: Any) -> str | None:
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return None if row["text"].strip() else "empty text"
    problem = row_messages(row)
    return problem if isinstance(problem, str) else None


# ----------------------------------------------------------------------------------------------------------------------
# Rows: documents cut into (ids, trained) pieces of at most seq_len + 1 tokens


def doc_rows(doc: Doc, lm: LanguageModel, seq_len: int) -> list[list[int]]:
    """A document as training rows of token ids, each at most seq_len + 1 long (consecutive rows share one token, so
    every token is predicted once). Conversation rows train on the assistant tokens only: their other targets are
    stored negated minus one (-id - 1) and masked in `collate`."""
    from plinth.data.sft import render_example

    if "text" in doc.row:
        ids = lm.tokenizer.encode(doc.row["text"]) + ([lm.tokenizer.eos_id] if lm.tokenizer.eos_id >= 0 else [])
        marked = ids
    else:
        template = lm.settings.chat_template
        if not template:
            from plinth.data.sft import PLAIN_TEMPLATE

            template = PLAIN_TEMPLATE
        s = lm.settings
        ex = render_example(row_messages(doc.row), template, lm.tokenizer, s.bos_token, s.eos_token,
                            s.bos_token_id if s.add_bos_token else None)
        marked = [t if keep else -t - 1 for t, keep in zip(ex.ids, ex.trained)]
    return [marked[i:i + seq_len + 1] for i in range(0, max(len(marked) - 1, 1), seq_len) if len(marked[i:]) >= 2]


def collate(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 (B, T) from marked rows: right-padded, untrained and padded targets IGNORE_INDEX."""
    T = max(len(r) for r in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        ids = [t if t >= 0 else -t - 1 for t in r]
        x[i, :len(r) - 1] = torch.tensor(ids[:-1])
        y[i, :len(r) - 1] = torch.tensor([t if t >= 0 else IGNORE_INDEX for t in r[1:]])
    return x, y


class _Steps:
    """The batches of one update, handed to `train_step` one by one."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def next_batch(self):
        return self.batches.pop(0)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class OnlineState:
    """What a checkpoint carries besides weights and optimizer: the input cursor, the replay buffer, counters."""

    cursor: dict
    commits: int = 0  # checkpoints written: the step number of checkpoints and metrics rows
    updates: int = 0
    kept: int = 0
    rolled_back: int = 0
    docs: int = 0
    tokens: int = 0
    anchor_loss: float = float("nan")
    start_anchor_loss: float = float("nan")
    reservoir: list[list[int]] = field(default_factory=list)
    pending: list[list[int]] = field(default_factory=list)  # rows of read documents not yet trained
    pending_docs: list[str] = field(default_factory=list)  # the document id of each pending row
    reservoir_seen: int = 0
    elapsed_s: float = 0.0

    def add_to_reservoir(self, rows: list[list[int]], capacity: int, seed: int) -> None:
        """Reservoir sampling (Vitter's algorithm R): every row of every kept update is in the buffer with equal
        probability capacity / rows seen. The draw for row n depends only on (seed, n): nothing to save but n."""
        for row in rows:
            if capacity == 0:
                return
            if len(self.reservoir) < capacity:
                self.reservoir.append(row)
            else:
                j = int(np.random.default_rng([seed, self.reservoir_seen]).integers(0, self.reservoir_seen + 1))
                if j < capacity:
                    self.reservoir[j] = row
            self.reservoir_seen += 1


class OnlineAdapter:
    """The state of one `adapt online` process: model, optimizer, anchor, replay sources, input."""

    def __init__(self, cfg: OnlineConfig) -> None:
        from plinth.training.continual import original_data

        validate(cfg, "adapt online")
        if not cfg.model:
            raise PlinthError("adapt online: give the model to adapt (a run, model folder, HF folder or builtin:NAME)")
        if not cfg.watch:
            raise PlinthError("adapt online: give --watch DIR (text files dropped in) or --watch FILE.jsonl "
                              "(lines appended)")
        self.cfg = cfg
        self.inbox = Inbox(cfg.watch)
        if cfg.replay_data and not (Path(cfg.replay_data) / "train" / "manifest.json").is_file():
            raise PlinthError(f"--replay_data {cfg.replay_data}: not token shards (train/manifest.json); write them "
                              "with `plinth data tokenize` and the model's tokenizer")
        if cfg.anchor and not Path(cfg.anchor).exists():
            raise PlinthError(f"--anchor {cfg.anchor}: no such file or folder")
        original = Path(cfg.replay_data) if cfg.replay_data else original_data(cfg.model)
        if not cfg.anchor and (original is None or not (original / "val" / "manifest.json").is_file()):
            raise PlinthError(f"adapt online: no anchor set: {cfg.model} names no held-out original data; pass "
                              "--anchor FILE (text the model must keep doing well on)")
        self.lm = load(cfg.model, device="cpu")
        self.seq_len = cfg.seq_len or min(self.lm.config.seq_len, MAX_DEFAULT_SEQ_LEN)
        if self.seq_len > self.lm.config.seq_len:
            raise PlinthError(f"--seq_len {self.seq_len} is longer than the model's context ({self.lm.config.seq_len})")
        self.original = TokenShards(original / "train") if original is not None else None
        if self.original is not None and self.original.tokenizer_sha256 not in ("", self.lm.tokenizer.sha256):
            raise PlinthError(f"{original}: these shards were written with another tokenizer than the model's")
        self.anchor = self._anchor_tokens(original)
        self.device = pick_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.out = Path(cfg.out).expanduser().resolve()
        self.pad_id = max(self.lm.tokenizer.eos_id, 0)

    def _anchor_tokens(self, original: Path | None) -> np.ndarray:
        limit = self.cfg.anchor_tokens
        if self.cfg.anchor:
            ids: list[int] = []
            for text in read_texts(self.cfg.anchor):
                ids += self.lm.tokenizer.encode(text) + [max(self.lm.tokenizer.eos_id, 0)]
                if len(ids) > limit:
                    break
            tokens = np.asarray(ids[:limit], dtype=np.int64)
        else:
            val = TokenShards(original / "val")
            tokens = val.window(0, min(limit, val.total_tokens)).astype(np.int64)
        if len(tokens) < 2:
            raise PlinthError(f"{self.cfg.anchor or original}: the anchor set has fewer than 2 tokens")
        return tokens

    def anchor_loss(self, model: torch.nn.Module) -> float:
        """Mean next-token loss on the anchor tokens (nats/token)."""
        return score_batches(model, text_windows(self.anchor, self.seq_len, self.cfg.batch_size), None,
                             self.precision)["loss"]

    def _replay_sources(self, state: OnlineState) -> list[str]:
        return [s for s in ("buffer", "original") if (s == "buffer" and state.reservoir)
                or (s == "original" and self.original is not None)]

    def new_rows_per_update(self, state: OnlineState) -> int:
        """How many pending new rows one update trains: `steps_per_update` batches of the non-replay rows."""
        n_replay = round(self.cfg.batch_size * self.cfg.replay_ratio) if self._replay_sources(state) else 0
        return self.cfg.steps_per_update * max(self.cfg.batch_size - n_replay, 1)

    def _batches(self, new_rows: list[list[int]], state: OnlineState) -> list:
        """The update's batches: the new rows in order, and a `replay_ratio` share of each batch's rows drawn from
        the replay buffer and the original shards (alternately when both exist)."""
        cfg, bs = self.cfg, self.cfg.batch_size
        sources = self._replay_sources(state)
        n_replay = round(bs * cfg.replay_ratio) if sources else 0
        n_new = max(bs - n_replay, 1)
        batches = []
        for step in range(math.ceil(len(new_rows) / n_new)):
            rng = np.random.default_rng([cfg.seed, state.updates, step])
            rows = new_rows[step * n_new:(step + 1) * n_new]
            for j in range(n_replay):
                if sources[j % len(sources)] == "buffer":
                    rows.append(state.reservoir[int(rng.integers(0, len(state.reservoir)))])
                else:
                    n = min(self.seq_len + 1, self.original.total_tokens)
                    start = int(rng.integers(0, self.original.total_tokens - n + 1))
                    rows.append(self.original.window(start, n).astype(np.int64).tolist())
            batches.append(collate(rows, self.pad_id))
        return batches


def _restore_exactly(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, opt_state: dict) -> None:
    with torch.no_grad():
        for name, p in model.state_dict(keep_vars=True).items():
            p.copy_(weights[name])
    optimizer.load_state_dict(copy.deepcopy(opt_state))


def _cap_change(model: torch.nn.Module, before: dict, max_norm: float) -> float:
    """The L2 norm of the update's weight change; scaled down to `max_norm` when larger (and `max_norm` > 0)."""
    params = dict(model.named_parameters())
    deltas = {n: p.detach() - before[n] for n, p in params.items() if p.requires_grad}
    norm = math.sqrt(sum(float(d.float().pow(2).sum()) for d in deltas.values()))
    if max_norm > 0 and norm > max_norm:
        with torch.no_grad():
            for n, d in deltas.items():
                params[n].copy_(before[n] + d * (max_norm / norm))
    return norm


def adapt_online(cfg: OnlineConfig) -> dict[str, Any]:
    """Watch `cfg.watch` and adapt `cfg.model` to what arrives until stopped (signal, `max_updates`, `idle_exit`);
    returns the summary (also OUT/summary.json). Resumes from OUT's newest checkpoint: its cursor says where the
    input continues. Raises PlinthError for bad options or input (before anything is written)."""
    ad = OnlineAdapter(cfg)
    out = ad.out
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        remove_stale_temp(out / "checkpoints")
        return _loop(ad, out)


def _loop(ad: OnlineAdapter, out: Path) -> dict[str, Any]:
    cfg, lm = ad.cfg, ad.lm
    seed_everything(cfg.seed)
    model = lm.model.float().to(ad.device)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, (0.9, 0.95))
    assets = _assets(out, lm)
    ckpt = latest_verified_checkpoint(out)
    if ckpt is not None:
        saved = restore_checkpoint(ckpt, model, optimizer)
        for group in optimizer.param_groups:  # the optimizer state came back with the old rate: --lr may change
            group["lr"] = cfg.lr
        state = OnlineState(**saved["data"])
        print(f"adapt online: resuming from {ckpt.name} (update {state.updates}; {state.docs} documents consumed)",
              flush=True)
    else:
        state = OnlineState(cursor=ad.inbox.start())
        state.anchor_loss = state.start_anchor_loss = ad.anchor_loss(model)
    model.train()
    log = MetricsLog(out, resume_step=state.commits if ckpt is not None else None)
    objective = Objective("online", lm_loss, _Steps([]))
    print(f"adapt online: watching {ad.inbox.path} ({ad.inbox.kind}); anchor loss {state.anchor_loss:.4f} over "
          f"{len(ad.anchor):,} tokens; updates of {cfg.steps_per_update} steps at lr {cfg.lr:g}, rolled back above "
          f"+{cfg.max_anchor_regression:.1%} (or +{cfg.max_total_regression:.1%} over the start)", flush=True)
    status, signum, idle_since, session = "stopped", None, time.monotonic(), time.perf_counter()
    elapsed_before = state.elapsed_s
    with _stop_on_signals() as stop:
        while True:
            if stop["signal"] is not None:
                signum = stop["signal"]
                status = f"stopped by signal {signal.Signals(signum).name}"
                break
            if cfg.max_updates and state.updates >= cfg.max_updates:
                status = f"stopped after {state.updates} updates (--max_updates)"
                break
            docs, skipped = [], {}
            if not state.pending:  # new input is read once the rows of the last documents are all trained
                docs, cursor, skipped = ad.inbox.read(state.cursor, cfg.max_docs)
                split = [(d.id, r) for d in docs for r in doc_rows(d, lm, ad.seq_len)]
                state.pending, state.pending_docs = [r for _, r in split], [i for i, _ in split]
                if not state.pending:
                    if cursor != state.cursor:  # only skipped or empty input: move past it (checkpointed)
                        state.cursor, state.commits = cursor, state.commits + 1
                        log.log(state.commits, update=state.updates, skipped_docs=skipped)
                        _checkpoint(out, state, model, optimizer, cfg, assets, elapsed_before, session)
                        continue
                    if cfg.idle_exit and time.monotonic() - idle_since >= cfg.idle_exit:
                        status = f"stopped after {cfg.idle_exit:g} s without new input (--idle_exit)"
                        break
                    _sleep(cfg.poll_seconds, stop)
                    continue
                state.cursor = cursor  # checkpointed below together with the pending rows and the update
                state.docs += len(docs)
            idle_since = time.monotonic()
            take = ad.new_rows_per_update(state)
            rows, state.pending = state.pending[:take], state.pending[take:]
            from_docs, state.pending_docs = state.pending_docs[:take], state.pending_docs[take:]
            row = _update(ad, model, optimizer, objective, rows, state)
            if not row["kept"]:  # the rest of a rejected document is not trained either
                rejected = set(from_docs)
                keep = [i for i, d in enumerate(state.pending_docs) if d not in rejected]
                row["dropped_rows"] = len(state.pending) - len(keep)
                state.pending = [state.pending[i] for i in keep]
                state.pending_docs = [state.pending_docs[i] for i in keep]
            state.commits += 1
            # logged before the checkpoint: a kill between the two drops the row on resume (it is past the checkpoint)
            log.log(state.commits, update=state.updates, docs=[d.id for d in docs], **row,
                    pending_rows=len(state.pending), **({"skipped_docs": skipped} if skipped else {}))
            _checkpoint(out, state, model, optimizer, cfg, assets, elapsed_before, session)
            print(f"update {state.updates}: {len(docs)} new documents, {row['rows']} rows ({len(state.pending)} "
                  f"pending), train loss "
                  f"{row['train_loss']:.3f}, anchor {row['anchor_before']:.4f} -> {row['anchor_after']:.4f} "
                  f"({row['anchor_regression']:+.2%}): {'kept' if row['kept'] else 'ROLLED BACK'}", flush=True)
    log.close()
    summary = {"status": status, "signal": signum, "updates": state.updates, "kept": state.kept,
               "rolled_back": state.rolled_back, "documents": state.docs, "tokens": state.tokens,
               "start_anchor_loss": state.start_anchor_loss, "anchor_loss": state.anchor_loss,
               "replay_buffer_rows": len(state.reservoir), "cursor": state.cursor,
               "checkpoint": str(latest_verified_checkpoint(out) or "")}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _update(ad: OnlineAdapter, model, optimizer, objective: Objective, rows: list[list[int]],
            state: OnlineState) -> dict[str, Any]:
    """One bounded update on `rows`, kept or rolled back on the anchor; returns its log row."""
    cfg = ad.cfg
    weights = {n: t.detach().clone() for n, t in model.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    objective.batches = _Steps(ad._batches(rows, state))
    losses, norms, units = [], [], 0
    for _ in range(len(objective.batches.batches)):
        r = train_step(model, model, optimizer, objective, 1, ad.device, ad.precision, cfg.grad_clip)
        losses.append(r.loss)
        norms.append(r.grad_norm)
        units += r.units
    change = _cap_change(model, weights, cfg.max_param_change)
    before = state.anchor_loss
    after = ad.anchor_loss(model)
    model.train()
    regression = (after - before) / before if before > 0 else after - before
    start = state.start_anchor_loss
    drift = (after - start) / start if start > 0 else after - start
    kept = math.isfinite(after) and regression <= cfg.max_anchor_regression and drift <= cfg.max_total_regression
    if kept:
        state.kept += 1
        state.anchor_loss = after
        state.add_to_reservoir(rows, cfg.replay_size, cfg.seed)
    else:
        _restore_exactly(model, optimizer, weights, opt_state)
        state.rolled_back += 1
    state.updates += 1
    state.tokens += units
    return {"kept": kept, "rows": len(rows), "train_loss": sum(losses) / len(losses), "grad_norm": max(norms),
            "weight_change": change, "anchor_before": before, "anchor_after": after, "anchor_regression": regression,
            "anchor_drift": drift,
            "lr": cfg.lr}


def _checkpoint(out: Path, state: OnlineState, model, optimizer, cfg: OnlineConfig, assets: dict[str, Path],
                elapsed_before: float, session: float) -> None:
    state.elapsed_s = elapsed_before + time.perf_counter() - session
    data = {k: v for k, v in state.__dict__.items()}
    run_state = {"step": state.commits, "tokens": state.tokens, "elapsed_s": state.elapsed_s, "data": data,
                 "objective": "online", "config": to_dict(cfg)}
    save_checkpoint(out, state.commits, model, optimizer, run_state, assets, cfg.keep_checkpoints)


def _assets(out: Path, lm: LanguageModel) -> dict[str, Path]:
    folder = out / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    lm.tokenizer.save(folder / TOKENIZER)
    names = [TOKENIZER]
    if lm.path is None or (Path(lm.path) / "generation.json").is_file() or lm.settings.chat_template:
        lm.settings.write(folder)
        names += [p.name for p in folder.iterdir() if p.name != TOKENIZER and not p.name.startswith(".")]
    return {n: folder / n for n in names}


def _sleep(seconds: float, stop: dict) -> None:
    end = time.monotonic() + seconds
    while stop["signal"] is None and time.monotonic() < end:
        time.sleep(min(0.05, max(end - time.monotonic(), 0)))


__all__ = ["Inbox", "OnlineAdapter", "adapt_online", "collate", "doc_rows"]
