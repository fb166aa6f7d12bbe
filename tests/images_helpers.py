"""Tiny images the tests draw themselves (coloured shapes, digits), and bad files of every kind."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 50), "blue": (40, 70, 230)}
SHAPES = ("circle", "square")


def draw(colour: str, shape: str, seed: int, size: int = 24, mode: str = "RGB") -> Image.Image:
    """One shape of `colour` on a grey background, jittered by `seed`."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(90, 160, 3)))
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = rng.uniform(r, size - r, 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    return im.convert(mode)


def digit(n: int, size: int = 24) -> Image.Image:
    """A digit drawn with Pillow's default font on black."""
    im = Image.new("L", (size, size), 0)
    ImageDraw.Draw(im).text((size // 3, size // 4), str(n), fill=255)
    return im


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def class_folder(root: Path, per_class: int = 6, size: int = 24) -> Path:
    """root/<colour_shape>/i.png for every colour x shape."""
    for c in COLOURS:
        for s in SHAPES:
            (root / f"{c}_{s}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw(c, s, hash((c, s, i)) % 10_000, size).save(root / f"{c}_{s}" / f"{i}.png")
    return root


def caption_folder(root: Path, n: int = 24, size: int = 24) -> Path:
    """root/img_i.png + captions.jsonl (two captions each, and a question-answer pair)."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c, s = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
        draw(c, s, i, size).save(root / f"img_{i}.png")
        rows.append({"image": f"img_{i}.png", "caption": f"a {c} {s}", "label": f"{c} {s}",
                     "question": "what colour is it?", "answer": c})
        rows.append({"image": f"img_{i}.png", "caption": f"one {c} {s}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
