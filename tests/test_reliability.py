"""Multi-rank failure: a bad record stops every rank with the same clear error, without a hang."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_two_rank_run_with_a_bad_record_fails_on_every_rank_without_hanging(tiny_models, tmp_path):
    Image.new("RGB", (84, 84)).save(tmp_path / "img.png")
    good = {
        "id": "a",
        "image": "img.png",
        "captions": ["top big red circle ."],
        "questions": [{"question": "what color ?", "options": ["red", "blue"], "answer": "A"}],
    }
    rows = [good, {**good, "id": "b", "image": "missing.png"}, {**good, "id": "c"}]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = [
        sys.executable,
        "-m",
        "lit_caprl.cli",
        "fit",
        "-c",
        str(ROOT / "experiments/shapes/captioner_pretrain.yaml"),
        "--data=lit_caprl.data.CaptionData",
        f"--data.train_file={data}",
        f"--data.val_file={data}",
        f"--model.init_args.model={tiny_models['qwen2_5_vl']}",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "LOCAL_RANK", "MASTER_"))}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # a hang fails
    assert done.returncode != 0
    message = f"lit-caprl: error: {data}:2: image: image file {tmp_path / 'missing.png'} does not exist"
    assert done.stderr.count(message) == 2, done.stderr[-3000:]  # one line from each rank, no traceback
    assert "Traceback" not in done.stderr
