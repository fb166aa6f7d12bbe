"""Write proverbs.jsonl: the first eight chapters of the Book of Proverbs (King James Version, public domain, from the
built-in `kjv` corpus), one {"text": ...} row per chapter: documents that "arrive" in the README's `adapt online`
example.

    python examples/online/make_proverbs.py
"""

import json
from pathlib import Path

from plinth.data.corpus import kjv_books

if __name__ == "__main__":
    chapters = dict(kjv_books())["Proverbs"].split("\n\n")[:8]
    out = Path(__file__).with_name("proverbs.jsonl")
    out.write_text("".join(json.dumps({"text": c}) + "\n" for c in chapters), encoding="utf-8")
    print(f"{out}: {len(chapters)} rows")
