"""`lit-caprl caption` on real-world images: any mode and size, killed and rerun, each id once."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from lit_caprl.data.images import open_rgb, to_rgb
from lit_caprl.data.sources import written_ids


def _image(i: int) -> Image.Image:
    """20 images of mixed modes and sizes, as users' folders hold them."""
    size = (24 + 7 * i, 80 - 3 * i)
    rgb = Image.new("RGB", size, (40 * (i % 6), 120, 200))
    return [
        rgb,
        rgb.convert("RGBA"),
        rgb.convert("L"),
        rgb.convert("P"),
        rgb.convert("CMYK"),
        Image.fromarray((np.full(size[::-1], 30000)).astype(np.uint16)),
    ][i % 6]


def write_images(folder):
    folder.mkdir()
    for i in range(20):
        image = _image(i)
        image.save(folder / (f"{i:02d}.jpg" if image.mode in ("CMYK", "L") else f"{i:02d}.png"))
    return folder


def test_every_mode_becomes_upright_rgb(tmp_path):
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # hidden pixels on white, not black
    grey16 = Image.fromarray(np.full((3, 3), 0x8000, dtype=np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    wide.save(tmp_path / "phone.jpg", exif=exif)
    assert open_rgb(tmp_path / "phone.jpg").size == (20, 40)


def test_caption_killed_half_way_and_rerun_writes_each_id_once(tiny_models, tmp_path):
    folder = write_images(tmp_path / "images")
    out = tmp_path / "captions.jsonl"
    argv = [
        sys.executable,
        "-m",
        "lit_caprl.cli",
        "caption",
        "--model",
        tiny_models["qwen2_5_vl"],
        "--in",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--num-captions",
        "2",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "48",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while (not out.exists() or out.read_text().count("\n") < 3) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    partial = out.read_text().count("\n")
    assert 3 <= partial < 20, f"the kill should land half-way ({partial} lines)"
    with open(out, "a") as f:
        f.write('{"id": "19.png", "image": "cut sho')  # as if killed mid-write: dropped and redone
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in folder.iterdir())  # each id exactly once
    assert all(len(r["captions"]) == 2 and all(isinstance(c, str) for c in r["captions"]) for r in rows)
    assert written_ids(out) == {p.name for p in folder.iterdir()}
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every image already captioned" in again.stdout


def test_huge_and_mixed_images_are_bounded_by_the_processor(tiny_models):
    from lit_caprl.models.loading import load_model

    adapter = load_model(tiny_models["qwen2_5_vl"])
    processor = adapter.processor.image_processor
    images = [Image.new("RGB", (3000, 2000), (9, 9, 9)), Image.new("RGB", (31, 17)), _image(5)]
    text = adapter.chat("describe", with_image=True)
    batch = adapter.encode_prompts([text] * 3, [to_rgb(im) for im in images])
    _, h, w = batch.image_grid_thw.T
    assert h[0] * w[0] * processor.patch_size**2 <= processor.size.longest_edge  # 6 MP resized into max_pixels
    assert len(batch) == 3 and (h * w > 0).all()  # three sizes, one batch


def test_a_corrupt_image_is_named_with_its_record(tmp_path):
    import pytest

    from lit_caprl.data.sources import source_records

    folder = write_images(tmp_path / "images")
    (folder / "07.png").write_bytes((folder / "07.png").read_bytes()[:60])  # truncated
    record = next(r for r in source_records(folder) if r.id == "07.png")
    with pytest.raises(ValueError, match=r"record '07.png': image .*07.png cannot be decoded"):
        record.load_image()


def test_caption_on_two_ranks_merges_their_parts(tiny_models, tmp_path):
    folder = write_images(tmp_path / "images")
    out = tmp_path / "captions.jsonl"
    argv = [
        sys.executable,
        "-m",
        "lit_caprl.cli",
        "caption",
        "--model",
        tiny_models["qwen2_5_vl"],
        "--in",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--max-new-tokens",
        "6",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "MASTER_", "WANDB_SERVICE"))}
    done = subprocess.run(argv, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(p.name for p in folder.iterdir())  # every image once, across both ranks
    assert not list(tmp_path.glob("captions.jsonl.rank*"))
