"""Supervised fine-tuning data: JSONL rows in the usual shapes -> chat messages -> token ids with an assistant mask.

Three row shapes are read (the first that fits wins):
- `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` (OpenAI chat format; content may be
  a string or a list of `{"type": "text", "text": ...}` parts);
- `{"prompt": ..., "response"|"completion": ..., "system"?: ...}`;
- `{"instruction": ..., "input"?: ..., "output": ...}` (the Alpaca shape; the input follows the instruction after a
  blank line).

Each conversation is rendered with the model's chat template (the same renderer as `plinth chat`), tokenized once
as a whole, and every token whose text lies inside an assistant turn is marked as trained. The assistant turns are
found by rendering the conversation up to each assistant message twice, with and without it (the first ending in the
template's generation prompt): the difference is exactly what the model must produce for that turn, its end-of-turn
marker included. A template that renders earlier turns differently once later ones exist cannot be split this way and
is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plinth.common import PlinthError
from plinth.data.chat import render_chat
from plinth.data.tokenizer import Tokenizer

# For models with no chat template of their own (models Plinth pretrained): plain "User:/Assistant:" turns, the
# assistant's turn closed by the end-of-document token, so generation after fine-tuning stops where the answer ends.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant")


@dataclass
class SFTExample:
    """One rendered conversation: token ids and, per token, whether it is trained (inside an assistant turn)."""

    ids: list[int]
    trained: list[bool]
    messages: list[dict[str, str]] = field(repr=False, default_factory=list)

    @property
    def n_trained(self) -> int:
        """Tokens the loss is taken on: trained tokens after the first position (the first token is never a target)."""
        return sum(self.trained[1:])


def _content(value: Any) -> str | None:
    """Message content as text: a string, or the text parts of an OpenAI content list; None if neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def row_messages(row: Any) -> list[dict[str, str]] | str:
    """The chat messages a JSONL row holds, or the reason it cannot be used (a short phrase, for counted skips)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if "messages" in row:
        raw = row["messages"]
        if not isinstance(raw, list) or not raw:
            return "messages is not a non-empty list"
        messages = []
        for m in raw:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return "a message without a system/user/assistant role"
            text = _content(m.get("content"))
            if text is None:
                return "a message whose content is not text"
            messages.append({"role": m["role"], "content": text})
    elif "prompt" in row:
        answer = row.get("response", row.get("completion"))
        if not isinstance(row["prompt"], str) or not isinstance(answer, str):
            return "prompt/response are not both strings"
        system = row.get("system")
        messages = ([{"role": "system", "content": system}] if isinstance(system, str) and system else []) + [
            {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
    elif "instruction" in row:
        extra, answer = row.get("input") or "", row.get("output")
        if not isinstance(row["instruction"], str) or not isinstance(extra, str) or not isinstance(answer, str):
            return "instruction/input/output are not strings"
        user = row["instruction"] + (f"\n\n{extra}" if extra else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    else:
        return "no messages, prompt or instruction field"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return "no assistant turn"
    return messages


def read_rows(path: str | os.PathLike) -> list[Any]:
    """The JSON values of a JSONL file's non-blank lines; PlinthError naming the file and line when one is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: file not found (expected JSONL: one conversation per line)")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise PlinthError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line") from None
    except UnicodeDecodeError:
        raise PlinthError(f"{path}: not UTF-8 text") from None
    return rows


def assistant_spans(messages: list[dict[str, str]], template: str, bos: str | None, eos: str | None) -> tuple[
        str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans (start, end) of its assistant turns.

    A turn's span is what the template adds for that message after its generation prompt, trailing whitespace
    excluded (the end-of-turn marker stays in: the model learns to stop). Raises PlinthError when the template does
    not render the conversation as a growing prefix.
    """
    full = render_chat(template, messages, False, bos, eos)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(template, messages[:i], True, bos, eos) if i else ""
        upto = render_chat(template, messages[: i + 1], False, bos, eos)
        if not upto.startswith(before) or not full.startswith(upto):
            raise PlinthError("the chat template renders earlier turns differently once later ones exist, so the "
                              "assistant tokens cannot be located; fine-tune with --template FILE (a template that "
                              "renders each turn the same way)")
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def render_example(messages: list[dict[str, str]], template: str, tokenizer: Tokenizer, bos: str | None,
                   eos: str | None, bos_id: int | None = None) -> SFTExample:
    """Token ids of the rendered conversation and which of them are assistant tokens (trained).

    The text is tokenized once, as a whole (so tokens merge exactly as at inference); a token is trained when its
    first character lies in an assistant span. `bos_id`: an id put first when the model wants one and the template
    did not write it.
    """
    text, spans = assistant_spans(messages, template, bos, eos)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, trained = list(enc.ids), [any(s <= start < e for s, e in spans) for start, _ in enc.offsets]
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids, trained = [bos_id, *ids], [False, *trained]
    return SFTExample(ids, trained, messages)


def _held_out(row: Any, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{json.dumps(row, sort_keys=True)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class SFTData:
    """Rendered train and validation examples and what was skipped (reason -> count)."""

    train: list[SFTExample]
    val: list[SFTExample]
    skipped: Counter
    truncated: int

    def report(self) -> dict[str, Any]:
        """Counts for the run summary."""
        return {"train_examples": len(self.train), "val_examples": len(self.val),
                "train_trained_tokens": sum(e.n_trained for e in self.train), "skipped": dict(self.skipped),
                "truncated": self.truncated}


def load_sft_data(path: str | os.PathLike, template: str, tokenizer: Tokenizer, max_len: int, bos: str | None,
                  eos: str | None, bos_id: int | None = None, val_path: str | os.PathLike | None = None,
                  val_fraction: float = 0.1, seed: int = 0) -> SFTData:
    """Read, render and split an SFT file; rows that cannot be used are counted by reason, not fatal.

    Examples longer than `max_len` tokens are cut to it (counted); one left with no trained token is skipped. The
    held-out split is `val_path`, else a `val_fraction` of the rows chosen by a hash of their content (so it does not
    move when rows are added). Raises PlinthError when no usable training row remains.
    """
    skipped: Counter = Counter()
    truncated = 0

    def build(rows: list[Any]) -> list[SFTExample]:
        nonlocal truncated
        out = []
        for row in rows:
            messages = row_messages(row)
            if isinstance(messages, str):
                skipped[messages] += 1
                continue
            ex = render_example(messages, template, tokenizer, bos, eos, bos_id)
            if len(ex.ids) > max_len:
                truncated += 1
                ex = SFTExample(ex.ids[:max_len], ex.trained[:max_len], messages)
            if ex.n_trained == 0:
                skipped["no assistant token within the context length"] += 1
                continue
            out.append(ex)
        return out

    rows = read_rows(path)
    if val_path:
        train_rows, val_rows = rows, read_rows(val_path)
    else:
        val_rows = [r for r in rows if _held_out(r, val_fraction, seed)]
        train_rows = [r for r in rows if not _held_out(r, val_fraction, seed)]
        if not val_rows and val_fraction > 0 and len(train_rows) > 1:
            val_rows = [train_rows.pop()]  # a tiny file still gets one held-out example
    data = SFTData(build(train_rows), build(val_rows), skipped, truncated)
    if not data.train:
        reasons = "; ".join(f"{n} x {why}" for why, n in skipped.most_common(3)) or "the file is empty"
        raise PlinthError(f"{path}: no usable training conversations ({reasons}); rows need messages with an "
                          "assistant turn, prompt/response, or instruction/output")
    return data
