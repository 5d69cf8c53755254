"""GRPO on 2 CPU ranks (gloo): the distributed math equals one rank's, sharded runs do not hang
on uneven captions, and sharded checkpoints resume and export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

SCRIPT = Path(__file__).parent / "scripts" / "grpo_ranks.py"


@pytest.fixture(scope="module")
def four_scenes(tmp_path_factory) -> str:
    from lit_caprl.data.shapes import write_dataset

    return str(write_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=4, n_val=2, seed=0))


def _run(tmp_path: Path, policy: str, data: str, strategy: str, *extra: str) -> tuple[dict, str]:
    out = tmp_path / f"{strategy}.pt"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--policy",
        policy,
        "--data",
        data,
        "--strategy",
        strategy,
        "--out",
        str(out),
        "--root",
        str(tmp_path),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "LOCAL_RANK", "MASTER_"))}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # a hang fails
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out, weights_only=True), done.stderr


@pytest.fixture(scope="module")
def one_rank_update(tiny_models, four_scenes, tmp_path_factory) -> dict:
    """One rank, all 4 scenes in one batch and one micro-batch, plain SGD: the update the
    2-rank runs must reproduce."""
    tmp = tmp_path_factory.mktemp("single")
    return _run(
        tmp,
        tiny_models["qwen2_5_vl"],
        four_scenes,
        "single",
        "--scripted",
        "--sgd",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "16",
    )[0]


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_ranks_make_the_same_update_as_one_rank(strategy, one_rank_update, tiny_models, four_scenes, tmp_path):
    """2 ranks x 2 scenes in one-scene micro-batches vs 1 rank x 4 scenes in one, same rollouts
    (fixed captions of uneven length), plain SGD without clipping, so the update is linear in the
    gradient and nothing rescales it away: dapo's global token count, gradient accumulation,
    the average over ranks and the k3 reference term must make the updates equal."""
    start = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_5_vl"]).state_dict()
    two_ranks, _ = _run(
        tmp_path, tiny_models["qwen2_5_vl"], four_scenes, strategy, "--scripted", "--sgd", "--batch-size", "2"
    )
    assert two_ranks.keys() == one_rank_update.keys()
    for k in start:
        moved = (one_rank_update[k] - start[k]).abs().max()
        assert moved > 1e-5, k  # every tensor moved (mu=2 SGD steps at lr 1)
        # float32 sums in another order, and float32 rounding of the weights (1e-7): a dropped
        # global token count (the ranks' captions differ in length) or a missing average over
        # ranks (2x) misses by a large share of the move.
        err = (two_ranks[k] - one_rank_update[k]).abs().max()
        assert err <= 1e-4 * moved + 1e-7, (k, float(err), float(moved))


def test_sharded_grpo_with_uneven_captions_resumes_and_exports(tiny_models, four_scenes, tmp_path):
    """FSDP2 with a sharded reference and natural sampling, one scene per rank and step: ranks
    see different scenes and stop decoding at different steps, yet nothing hangs; the sharded
    checkpoint of step 3, inside an epoch, resumes on 2 ranks exactly; the export is one plain
    `from_pretrained` directory with the trained weights."""
    policy, args = tiny_models["qwen2_5_vl"], ["--shard-reference", "--batch-size", "1"]
    trained, _ = _run(tmp_path, policy, four_scenes, "fsdp2", *args, "--steps", "3")
    ranks = [json.loads((tmp_path / f"fsdp2.pt.rank{r}.json").read_text()) for r in (0, 1)]
    for step0, step1 in zip(*ranks, strict=True):
        assert not set(step0["ids"]) & set(step1["ids"])
    assert any(max(s0["lengths"]) != max(s1["lengths"]) for s0, s1 in zip(*ranks, strict=True))

    assert (tmp_path / "ckpt" / "last.ckpt").is_dir()  # one shard per rank
    export = AutoModelForImageTextToText.from_pretrained(tmp_path / "export").state_dict()
    assert all(torch.equal(export[k], trained[k]) for k in trained)

    resumed, log = _run(
        tmp_path, policy, four_scenes, "fsdp2", *args, "--steps", "4", "--resume", str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert "Restored all states from the checkpoint" in log
    assert len(json.loads((tmp_path / "fsdp2.pt.rank0.json").read_text())) == 1  # only rollout 4 ran
    assert any(not torch.equal(resumed[k], trained[k]) for k in trained)
    _assert_resumed_as_straight(tmp_path, policy, four_scenes, resumed, *args)


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_grpo_resumes_at_an_epoch_end(strategy, tiny_models, four_scenes, tmp_path):
    """Two scenes per rank and step, one step per epoch: the checkpoint ends an epoch; resumed,
    the ranks start the next epoch in its own order (torchdata alone would skip it) and end
    with the weights of a straight run."""
    policy = tiny_models["qwen2_5_vl"]
    _run(tmp_path, policy, four_scenes, strategy, "--steps", "3")
    resumed, _ = _run(
        tmp_path, policy, four_scenes, strategy, "--steps", "4", "--resume", str(tmp_path / "ckpt" / "last.ckpt")
    )
    _assert_resumed_as_straight(tmp_path, policy, four_scenes, resumed, strategy=strategy)


def _assert_resumed_as_straight(
    tmp_path: Path, policy: str, data: str, resumed: dict, *extra: str, strategy: str = "fsdp2"
) -> None:
    """A run straight to step 4 drew the scenes the resumed run drew at step 4, on each rank, and
    ended with the same weights (sampling follows (seed, rank, step), so equal weights need
    equal scenes): a resumed epoch with another order, or skipped, fails."""
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight, _ = _run(straight_dir, policy, data, strategy, "--steps", "4", *extra)
    for rank in (0, 1):
        last = json.loads((tmp_path / f"{strategy}.pt.rank{rank}.json").read_text())[-1]
        assert last["ids"] == json.loads((straight_dir / f"{strategy}.pt.rank{rank}.json").read_text())[3]["ids"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
