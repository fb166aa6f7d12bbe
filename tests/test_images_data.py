"""The image data layer: decoding guards, sources (folders, caption files, tar shards, built-ins), prepared sets,
deterministic augmentation and batches."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from plinth.common import PlinthError
from plinth.config import ImagesPrepareConfig
from plinth.data.image_prep import ImageBatches, ImageSet, prepare_images, read_image_inputs
from plinth.data.image_sources import builtin_records, draw_shapes, read_idx, shapes_text
from plinth.data.images import BadImage, Preprocess, decode_image, random_resized_crop, resize_center_crop
from tests.images_helpers import bomb_png, caption_folder, class_folder, digit, draw, png_bytes


def test_decode_guards(tmp_path):
    good = png_bytes(draw("red", "circle", 0))
    assert decode_image(good).pixels.shape == (24, 24, 3)
    cases = {"empty_file": b"", "corrupt": b"\x89PNG\r\n\x1a\nnot really a png" * 3,
             "truncated": good[: len(good) // 2], "too_large": bomb_png()}
    for reason, data in cases.items():
        with pytest.raises(BadImage) as e:
            decode_image(data)
        assert e.value.reason == reason, (reason, e.value)
    with pytest.raises(BadImage) as e:
        decode_image(tmp_path / "nope.png")
    assert e.value.reason == "missing_image"


def test_modes_are_converted_to_rgb():
    gray = decode_image(png_bytes(draw("red", "circle", 0, mode="L")))
    assert gray.pixels.shape == (24, 24, 3) and gray.mode == "L"
    assert (gray.pixels[..., 0] == gray.pixels[..., 1]).all()
    rgba = decode_image(png_bytes(draw("blue", "square", 1, mode="RGBA")))
    assert rgba.pixels.shape == (24, 24, 3) and rgba.mode == "RGBA"
    from PIL import Image
    sixteen = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert decode_image(png_bytes(sixteen)).pixels.max() == 255
    one = decode_image(png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))))
    out = resize_center_crop(one.pixels, 16)
    assert out.shape == (16, 16, 3) and tuple(out[8, 8]) == (10, 200, 30)


def test_random_resized_crop_is_a_function_of_the_seed():
    img = np.asarray(draw("green", "circle", 3, 48))
    a = random_resized_crop(img, 16, np.random.default_rng([1, 2]))
    b = random_resized_crop(img, 16, np.random.default_rng([1, 2]))
    c = random_resized_crop(img, 16, np.random.default_rng([1, 3]))
    assert a.shape == (16, 16, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_prepare_counts_every_bad_input_by_reason(tmp_path):
    root = caption_folder(tmp_path / "set")
    (root / "img_0.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")  # corrupt
    (root / "img_1.png").write_bytes(png_bytes(draw("red", "circle", 1))[:60])  # truncated
    (root / "img_2.png").write_bytes(b"")  # zero size
    (root / "img_3.png").write_bytes(bomb_png())  # decompression-bomb header
    draw("red", "circle", 4, mode="L").save(root / "img_4.png")  # grayscale among RGB: kept
    from PIL import Image
    Image.new("RGB", (1, 1), (255, 0, 0)).save(root / "img_5.png")  # 1x1: kept, upscaled
    draw("blue", "circle", 9).save(root / "stray.png")  # an image no caption names
    with open(root / "captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "missing.png", "caption": "gone"}) + "\n")  # caption without image
    report = prepare_images(ImagesPrepareConfig(inputs=[str(root)], out=str(tmp_path / "out"), size=16,
                                                val_fraction=0.25, progress=False))
    assert report["skipped"] == {"corrupt": 1, "truncated": 1, "empty_file": 1, "too_large": 1,
                                 "missing_image": 1, "no_caption": 1}
    assert report["images_kept"] == 20 and report["converted_from_mode"]["L"] == 1
    assert report["upscaled_smaller_than_size"] == 1
    images = ImageSet(tmp_path / "out")
    train, val = images.split("train"), images.split("val")
    assert len(train) + len(val) == 20 and len(val) > 0
    assert images.classes == ["blue circle", "blue square", "green circle", "green square", "red circle",
                              "red square"]
    rec = train.records[0]
    assert len(rec["captions"]) == 2 and rec["qa"] == [["what colour is it?", rec["captions"][0].split()[1]]]
    assert train.pixels.shape[1:] == (16, 16, 3)


def test_class_folders_sidecar_captions_and_tar_shards(tmp_path):
    classes = class_folder(tmp_path / "classes", per_class=3)
    draw("red", "circle", 0).save(classes / "loose.png")  # an image outside any class folder
    side = tmp_path / "stamps"
    side.mkdir()
    draw("red", "square", 0).save(side / "a.png")
    (side / "a.txt").write_text("A red square.\nfr.utf8=Un carre rouge.\n")
    draw("blue", "square", 0).save(side / "b.png")  # no .txt
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for key, data in (("k1.png", png_bytes(draw("green", "circle", 1))), ("k1.txt", b"a green circle"),
                          ("k2.png", png_bytes(draw("green", "square", 2))), ("k2.cls", b"green square"),
                          ("k3.png", png_bytes(digit(3)))):
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = prepare_images(ImagesPrepareConfig(inputs=[str(classes), str(side), str(tar_path)],
                                                out=str(tmp_path / "out"), size=16, progress=False,
                                                holdout_classes=["blue square"]))
    assert report["images_kept"] == 18 + 1 + 2
    assert report["skipped"] == {"unlabelled": 1, "no_caption": 2}
    images = ImageSet(tmp_path / "out")
    unseen = images.split("unseen")
    assert len(unseen) == 3 and images.unseen_classes == ["blue square"]
    assert {r["captions"][0] for r in unseen.records} == {"a photo of a blue square"}
    texts = {c for s in ("train", "val") for r in images.split(s).records for c in r["captions"]}
    assert "A red square." in texts and "a green circle" in texts and "a photo of a green square" in texts


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "captions.jsonl").write_text("{not json\n")
    with pytest.raises(PlinthError, match=r"captions.jsonl:1: not valid JSON"):
        prepare_images(ImagesPrepareConfig(inputs=[str(tmp_path / "bad")], out=str(tmp_path / "o"), progress=False))
    with pytest.raises(PlinthError, match="no such file"):
        prepare_images(ImagesPrepareConfig(inputs=[str(tmp_path / "nothing")], out=str(tmp_path / "o")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlinthError, match="no usable image"):
        prepare_images(ImagesPrepareConfig(inputs=[str(tmp_path / "empty")], out=str(tmp_path / "o"),
                                           progress=False))
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(PlinthError, match="not a prepared image set"):
        ImageSet(tmp_path)
    with pytest.raises(PlinthError, match="never occur"):
        prepare_images(ImagesPrepareConfig(inputs=["builtin:shapes"], out=str(tmp_path / "o"), max_images=20,
                                           holdout_classes=["pink elephant"], progress=False))


def test_batches_are_reproducible_and_resume_exactly(tmp_path):
    prepare_images(ImagesPrepareConfig(inputs=[str(class_folder(tmp_path / "c", per_class=2))],
                                       out=str(tmp_path / "out"), size=16, val_fraction=0.0, progress=False))
    split = ImageSet(tmp_path / "out").split("train")
    pre = Preprocess(12)
    a = ImageBatches(split, 5, seed=3, preprocess=pre)
    first = [a.next_batch() for _ in range(4)]
    b = ImageBatches(split, 5, seed=3, preprocess=pre)
    b.load_state_dict({"index": 2})
    assert torch.equal(b.next_batch()["pixels"], first[2]["pixels"])
    assert first[0]["pixels"].shape == (5, 3, 12, 12) and first[0]["pixels"].dtype == torch.float32
    seen = torch.cat([x["index"] for x in first[:2]]).tolist() + first[2]["index"].tolist()[:2]
    assert sorted(seen) == list(range(12))  # one epoch visits every image once


def test_builtins_and_idx(tmp_path):
    pixels, colour, kind, count = draw_shapes(np.random.default_rng(0))
    captions, qa = shapes_text(colour, kind, count)
    assert pixels.shape == (64, 64, 3) and colour in captions[0] and qa[0][1] in captions[0]
    first = next(builtin_records("shapes", 3))
    assert first.label and len(first.captions) == 3 and len(first.qa) == 3
    pytest.importorskip("sklearn")
    d = next(builtin_records("digits"))
    assert d.pixels.shape == (8, 8, 3) and d.label == "zero"
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in arr.shape) + arr.tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), arr)
    (tmp_path / "y").write_bytes(raw[:-3])
    with pytest.raises(PlinthError, match="truncated IDX"):
        read_idx(tmp_path / "y")


def test_read_image_inputs_counts_bad_files(tmp_path):
    draw("red", "circle", 0).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    names, arrays, skipped = read_image_inputs([str(tmp_path)])
    assert len(arrays) == 1 and skipped == {"empty_file": 1}
