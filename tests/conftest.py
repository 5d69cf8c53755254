"""Shared fixtures: tiny models and a small ShapesWorld set, built once per session."""

from __future__ import annotations

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
