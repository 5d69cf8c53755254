"""The tiny CLIP of the image-caption similarity reward: trained by `ClipStage`, loaded by
`ClipSimilarity` from its export, scoring a caption independently of its batch."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from lit_caprl.models.tiny import make_tiny

    return str(make_tiny("clip", "tiny", tmp_path_factory.mktemp("clip") / "clip"))


def _records(shapes_root: str, n: int):
    from lit_caprl.data.schema import load_records

    return load_records(f"{shapes_root}/train.jsonl")[0][:n]


def test_a_caption_scores_the_same_in_any_batch(tiny_clip, shapes_root, tmp_path):
    """Padding must not move a caption's embedding (CLIP reads the first EOS, with absolute
    positions): left padding made a short caption's reward depend on its batch's longest one.
    The export's tokenizer here says left, as our other tiny tokenizers do."""
    from lit_caprl.rewards import ClipSimilarity

    export = tmp_path / "clip"
    shutil.copytree(tiny_clip, export)
    config = json.loads((export / "tokenizer_config.json").read_text())
    (export / "tokenizer_config.json").write_text(json.dumps(config | {"padding_side": "left"}))
    reward = ClipSimilarity(str(export))
    records = _records(shapes_root, 2)
    short = "center big green triangle ."
    long = records[1].captions[0] + " " + records[1].captions[0]
    alone = reward([short], records[:1]).rewards
    batched = reward([short, long], records).rewards
    assert batched[0].item() == pytest.approx(alone[0].item(), abs=1e-6)


def test_clip_stage_learns_which_caption_belongs_to_which_image(tiny_clip, shapes_root, tmp_path):
    """After a short training the export, as a reward, scores each scene's own caption above
    another scene's: what the CLIP-style reward of comparisons.yaml relies on."""
    from lit_caprl.callbacks import HFExport
    from lit_caprl.data import ShapesImageTextData
    from lit_caprl.rewards import ClipSimilarity
    from lit_caprl.stages import ClipStage
    from lit_caprl.stages.optim import Optim

    L.seed_everything(0)
    stage = ClipStage(tiny_clip, optim=Optim(lr=2e-3, warmup_steps=10, schedule="constant"))
    data = ShapesImageTextData(root=shapes_root, batch_size=16)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=150,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[HFExport()],
    )
    trainer.fit(stage, datamodule=data)
    reward = ClipSimilarity(str(tmp_path / "export"))
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    records = _records(shapes_root, 32)
    own = reward([r.captions[0] for r in records], records).rewards
    other = reward([r.captions[0] for r in records[1:] + records[:1]], records).rewards
    assert (own > other).float().mean() > 0.8
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == "clip"
    assert torch.isfinite(own).all()
