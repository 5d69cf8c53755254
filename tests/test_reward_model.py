"""The caption reward model (a judge without eyes): its pairs, and that training teaches it
the pairs' preference and exports a model `ClassifierReward` loads."""

import random

import lightning as L
import torch

from lit_caprl.callbacks import HFExport
from lit_caprl.data import ShapesJudgeData, shapes, shapes_qa
from lit_caprl.data.schema import load_records
from lit_caprl.data.shapes_data import judge_pairs
from lit_caprl.rewards import ClassifierReward
from lit_caprl.stages import RewardModelStage
from lit_caprl.stages.optim import Optim


def test_every_corruption_is_one_mistake_away_from_gold():
    """Left out, added, or one attribute changed: exactly one claim differs from the scene."""
    rng = random.Random(0)
    for _ in range(200):
        objects = shapes.sample_scene(rng, 1, 4)
        claimed = shapes_qa.parse_caption(shapes.corrupted_caption(rng, objects))
        hits, n_claims, n_true = shapes_qa.match_counts(claimed, objects)
        assert (n_claims, hits) in {(n_true - 1, n_true - 1), (n_true + 1, n_true), (n_true, n_true - 1)}


def test_judge_pairs_put_gold_first(shapes_root):
    records = load_records(f"{shapes_root}/train.jsonl")[0][:5]
    pairs = judge_pairs(records, seed=0)
    assert len(pairs) == 10 and all(p["chosen"] == r.captions[0] for p, r in zip(pairs[::2], records, strict=True))
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_training_ranks_chosen_above_rejected_and_exports_a_reward(tiny_models, shapes_root, tmp_path):
    """One fixed batch, 30 steps: the pairwise loss falls and the trained judge scores the batch's
    chosen captions above its rejected ones; `ClassifierReward` loads the export."""
    L.seed_everything(0)
    data = ShapesJudgeData(shapes_root, batch_size=8)
    data.setup()
    batch = {k: [p[k] for p in list(data.train_set)[:8]] for k in ("chosen", "rejected")}
    module = RewardModelStage(tiny_models["qwen2"], optim=Optim(lr=3e-3))
    with torch.no_grad():
        before = float(module.scores(batch["chosen"]).sum() - module.scores(batch["rejected"]).sum())

    class Fixed(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([batch] * 30, batch_size=None)

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[HFExport()],
    )
    trainer.fit(module, datamodule=Fixed())
    with torch.no_grad():
        chosen, rejected = module.scores(batch["chosen"]), module.scores(batch["rejected"])
    assert float(chosen.sum() - rejected.sum()) > before and bool((chosen > rejected).all())

    reward = ClassifierReward(str(tmp_path / "export"))
    records = load_records(f"{shapes_root}/train.jsonl")[0][:8]
    got = reward(batch["chosen"], records).rewards
    assert torch.allclose(got, chosen.cpu(), atol=1e-4)  # the export scores as the trained module did
