"""Shared fixtures: tiny models and a small ShapesWorld set, built once per session."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from lit_caprl.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("models")
    return {fam: str(make_tiny(fam, "tiny", root / fam)) for fam in ("qwen2_5_vl", "llava", "qwen2")}


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
    from lit_caprl.data.shapes import write_dataset

    return str(write_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=64, n_val=16, seed=0))


@pytest.fixture(scope="session")
def pairs_dir(tiny_models, shapes_root, tmp_path_factory):
    """DPO pairs mined by `lit-caprl mine-pairs` with the tiny captioner and reader."""
    from lit_caprl.cli import main

    out = tmp_path_factory.mktemp("mined") / "pairs"
    cfg = {
        "policy": tiny_models["qwen2_5_vl"],
        "data": f"{shapes_root}/train.jsonl",
        "out": str(out),
        "reward": {
            "class_path": "lit_caprl.rewards.CapRLQAReward",
            "init_args": {"reader": tiny_models["qwen2"], "num_draws": 2},
        },
        "num_generations": 4,
        "max_new_tokens": 8,
        "min_margin": 0.0,
        "limit": 12,
        "batch_size": 4,
    }
    cfg_file = out.parent / "mine.yaml"
    cfg_file.write_text(json.dumps(cfg))
    assert main(["mine-pairs", "--config", str(cfg_file)]) == 0
    return out
