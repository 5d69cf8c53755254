"""The real-scale configs (Qwen2.5-VL-3B, 8 GPUs, FSDP2) run as they are on 2 CPU ranks once the
model and data paths point at tiny local ones and the run is cut to 2 steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lit_caprl.data.schema import load_records

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments" / "caprl").glob("*.yaml"))


@pytest.fixture(scope="module")
def pair_file(shapes_root) -> Path:
    """Preference pairs in the documented format (beside the images): gold caption over a wrong one."""
    records, _ = load_records(Path(shapes_root) / "train.jsonl")
    out = Path(shapes_root) / "caprl_test_pairs.jsonl"
    rows = [
        r.to_json(os.path.relpath(r.image, shapes_root))
        | {"chosen": r.captions[0], "rejected": "top small red circle ."}
        for r in records[:8]
    ]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


@pytest.fixture(scope="module")
def caprl_qa_parquet(shapes_root) -> Path:
    """ShapesWorld scenes in CapRL-QA-75K's own columns (labelled choices, embedded image bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records, _ = load_records(Path(shapes_root) / "train.jsonl")
    rows = [
        {
            "id": r.id,
            "image": {"bytes": r.image.read_bytes(), "path": None},
            "data_source": "image_caption_rl",
            "prompt": [{"role": "user", "content": "<image> Please describe this image in detail."}],
            "reward_model": {
                "ground_truth": [
                    {
                        "question": q.question,
                        "answer": q.answer,
                        "choices": [f"{'ABCD'[i]}) {o}" for i, o in enumerate(q.options)],
                    }
                    for q in r.questions
                ]
            },
        }
        for r in records[:8]
    ]
    out = Path(shapes_root).parent / "caprl-qa" / "train-00000-of-00001.parquet"
    out.parent.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.parent


def test_there_are_real_scale_configs():
    assert {c.stem for c in CONFIGS} == {"sft", "grpo", "dpo"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_real_scale_config_runs_two_steps_on_two_cpu_ranks(
    config, tiny_models, shapes_root, pair_file, caprl_qa_parquet, tmp_path
):
    train, val = f"{shapes_root}/train.jsonl", f"{shapes_root}/val.jsonl"
    if config.stem == "dpo":
        train = val = str(pair_file)
    if config.stem == "grpo":  # the config reads CapRL-QA-75K's parquet as it is; no val set
        train, val = str(caprl_qa_parquet), "null"
    overrides = [
        f"--model.init_args.model={tiny_models['qwen2_5_vl']}",
        f"--data.init_args.train_file={train}",
        f"--data.init_args.val_file={val}",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy.init_args.data_parallel_size=2",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    if config.stem == "grpo":
        overrides += [
            f"--model.init_args.reward.init_args.reader={tiny_models['qwen2']}",
            "--model.init_args.max_new_tokens=8",
            "--model.init_args.max_rollout_steps=2",
            "--data.init_args.batch_size=1",
        ]
    if config.stem == "dpo":
        overrides += [f"--model.init_args.init_from={tiny_models['qwen2_5_vl']}"]
    argv = [sys.executable, "-m", "lit_caprl.cli", "fit", "-c", str(config), *overrides]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "LOCAL_RANK", "MASTER_"))}
    env["LIT_CAPRL_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    export = tmp_path / "export"
    if config.stem == "dpo":  # LoRA under FSDP2: the gathered adapters, loadable with init_from
        assert any("lora_" in k for k in load_file(export / "adapter_model.safetensors"))
    else:
        assert (export / "config.json").is_file()
