"""Readings behind the issue-10 tables in docs/benchmarks.md that the verbs do not print themselves.

    .venv/bin/python benchmarks/image_readings.py by-class RUN DATA [--split unseen]
        zero-shot among ALL classes of the set, per true class: correct/total and the commonest answer
    .venv/bin/python benchmarks/image_readings.py caption-baseline DATA [--split val]
        BLEU-4 and CIDEr-D of a constant caption (each caption tied for commonest in training) vs the references
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def by_class(run: str, data: str, split: str) -> None:
    from plinth.data.image_prep import ImageSet
    from plinth.evaluate.vision import zero_shot
    from plinth.pipelines import load

    images = ImageSet(data)
    r = zero_shot(load(run, device="cpu"), images.split(split), images.classes, images.templates)
    names = images.classes
    print(f"{run} on {data}/{split}: zero-shot among all {len(names)} classes {r['accuracy']:.1%} "
          f"({sum(p == y for p, y in zip(r['predictions'], r['labels']))}/{r['images']})")
    print("| true class | correct | commonest answer |\n|---|---:|---|")
    for y in sorted(set(r["labels"])):
        preds = Counter(p for p, t in zip(r["predictions"], r["labels"]) if t == y)
        top, n = preds.most_common(1)[0]
        print(f"| {names[y]} | {preds[y]}/{sum(preds.values())} | {names[top]} ({n}) |")


def caption_baseline(data: str, split: str) -> None:
    from plinth.data.image_prep import ImageSet
    from plinth.evaluate.caption_metrics import bleu4, cider_d

    images = ImageSet(data)
    counts = Counter(c for r in images.split("train").records for c in r["captions"]).most_common()
    refs = [r["captions"] for r in images.split(split).records if r["captions"]]
    for caption, n in counts:  # every caption tied for commonest (a set's phrasings of one image tie)
        if n < counts[0][1]:
            break
        hyps = [caption] * len(refs)
        print(f"constant caption {caption!r} ({n} training images) on {len(refs)} {split} images: "
              f"BLEU-4 {bleu4(hyps, refs):.1f}, CIDEr-D {cider_d(hyps, refs):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("by-class")
    a.add_argument("run")
    a.add_argument("data")
    a.add_argument("--split", default="unseen")
    b = sub.add_parser("caption-baseline")
    b.add_argument("data")
    b.add_argument("--split", default="val")
    args = p.parse_args()
    if args.what == "by-class":
        by_class(args.run, args.data, args.split)
    else:
        caption_baseline(args.data, args.split)


if __name__ == "__main__":
    main()
