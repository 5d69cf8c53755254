"""Record (or compare against) a fixed-seed trace of 3 GRPO steps per `loss_type` and 3 DPO steps
on tiny models: parameters and logged metrics after every step.

A refactoring that claims "behaviour unchanged" records a trace before and compares after:
    python tests/scripts/trace_steps.py --out before.pt
    python tests/scripts/trace_steps.py --compare before.pt      # exit 1 if anything moved > 1e-6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

from lit_caprl.callbacks import RewardLoggingCallback, RolloutCallback
from lit_caprl.cli import main as cli
from lit_caprl.data import PairData, ShapesPromptData
from lit_caprl.data.shapes import write_dataset
from lit_caprl.models.tiny import make_tiny
from lit_caprl.rewards import CapRLQAReward
from lit_caprl.stages import DPOStage, GRPOStage
from lit_caprl.stages.optim import Optim

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


class Recorder(L.Callback):
    """Parameters and logged metrics after every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = {n: p.detach().clone() for n, p in pl_module.policy.named_parameters()}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.steps.append({"params": params, "metrics": metrics})


def _trainer(root: Path, callbacks: list, max_steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=callbacks,
    )


def record(root: Path) -> dict[str, list[dict]]:
    torch.set_num_threads(1)
    models = {fam: str(make_tiny(fam, "tiny", root / fam)) for fam in ("qwen2_5_vl", "qwen2")}
    data = str(write_dataset(root / "shapes", n_train=16, n_val=4, seed=0))
    trace = {}
    for loss_type in LOSS_TYPES:
        L.seed_everything(0)
        reward = CapRLQAReward(models["qwen2"], num_draws=2)
        module = GRPOStage(
            models["qwen2_5_vl"],
            reward,
            num_generations=4,
            max_new_tokens=16,
            beta=0.04,
            mu=2,
            micro_batch_size=4,
            loss_type=loss_type,
            max_rollout_steps=3,
            optim=Optim(lr=1e-2),
        )
        rec = Recorder()
        _trainer(root, [RolloutCallback(), RewardLoggingCallback(), rec], -1).fit(
            module, datamodule=ShapesPromptData(data, batch_size=2)
        )
        trace[f"grpo/{loss_type}"] = rec.steps
    pairs = root / "pairs"
    cfg = {
        "policy": models["qwen2_5_vl"],
        "data": f"{data}/train.jsonl",
        "out": str(pairs),
        "reward": {
            "class_path": "lit_caprl.rewards.CapRLQAReward",
            "init_args": {"reader": models["qwen2"], "num_draws": 2},
        },
        "num_generations": 4,
        "max_new_tokens": 8,
        "min_margin": 0.0,
        "limit": 12,
        "batch_size": 4,
    }
    (root / "mine.yaml").write_text(json.dumps(cfg))
    assert cli(["mine-pairs", "--config", str(root / "mine.yaml")]) == 0
    L.seed_everything(0)
    module = DPOStage(models["qwen2_5_vl"], beta=0.1, optim=Optim(lr=1e-2))
    rec = Recorder()
    file = str(pairs / "pairs.jsonl")
    _trainer(root, [rec], 3).fit(module, datamodule=PairData(file, file, batch_size=2))
    trace["dpo"] = rec.steps
    return trace


def compare(before: dict, after: dict, tol: float = 1e-6) -> list[str]:
    problems = []
    for run, steps in before.items():
        if len(after.get(run, [])) != len(steps):
            problems.append(f"{run}: {len(steps)} steps before, {len(after.get(run, []))} after")
            continue
        for i, (b, a) in enumerate(zip(steps, after[run], strict=True)):
            for name, p in b["params"].items():
                diff = (p - a["params"][name]).abs().max().item()
                if diff > tol:
                    problems.append(f"{run} step {i}: parameter {name} differs by {diff:.2e}")
            for key, v in b["metrics"].items():
                if key not in a["metrics"]:
                    problems.append(f"{run} step {i}: metric {key} missing")
                elif abs(v - a["metrics"][key]) > tol:
                    problems.append(f"{run} step {i}: metric {key} {v} -> {a['metrics'][key]}")
    return problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the trace here")
    parser.add_argument("--compare", help="compare with a recorded trace")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = record(Path(tmp))
    if args.out:
        torch.save(trace, args.out)
    if args.compare:
        problems = compare(torch.load(args.compare), trace)
        print("\n".join(problems) or f"equal within 1e-6: {', '.join(trace)}")
        sys.exit(1 if problems else 0)
