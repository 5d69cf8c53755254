"""Preference pairs from scored captions: per image, the best caption against the worst,
kept only when their reward margin is at least `min_margin` (a near-tie teaches DPO noise).

Pairs are records in the documented JSONL format (`data/schema.py`) with `chosen`,
`rejected` and provenance in `meta` (both rewards, the margin, the policy). Their images
are hard-linked (or copied) into the pair set's own `images/` folder, so the set is
self-contained and passes the schema's rule that images live under the data file's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_caprl.data import prompts as prompt_texts
from lit_caprl.data.schema import Record, load_records
from lit_caprl.io import atomic_dir, link_image
from lit_caprl.models.loading import load_model
from lit_caprl.rewards.base import FrozenReward
from lit_caprl.rollout import RolloutConfig, sample

PAIRS_FILE = "pairs.jsonl"


def select_pair(rewards: list[float], min_margin: float) -> tuple[int, int] | None:
    """(best, worst) indices of one group, or None when best - worst < min_margin or the
    captions tie; the first index wins a tie for best or worst."""
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
    margin = rewards[best] - rewards[worst]
    if margin <= 0 or margin < min_margin:
        return None
    return best, worst


def mine_groups(
    records: list[Record], captions: list[str], rewards: torch.Tensor, min_margin: float, policy: str, tag: str = ""
) -> list[tuple[Record, dict]]:
    """One (record, pair fields) per image whose group passes `select_pair`; `rewards` is [B, G]
    and `captions` is grouped like it. `tag` makes ids unique when an image recurs (rollout steps)."""
    g = rewards.shape[1]
    out = []
    for b, record in enumerate(records):
        group = rewards[b].tolist()
        picked = select_pair(group, min_margin)
        if picked is None:
            continue
        best, worst = picked
        out.append(
            (
                record,
                {
                    "id": record.id + tag,
                    "chosen": captions[b * g + best],
                    "rejected": captions[b * g + worst],
                    "meta": {
                        "rewards": {"chosen": group[best], "rejected": group[worst]},
                        "margin": group[best] - group[worst],
                        "policy": policy,
                    },
                },
            )
        )
    return out


class PairWriter:
    """Appends pair records to `out_dir/pairs.jsonl`, one write per call, linking their images."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, pairs: list[tuple[Record, dict]]) -> int:
        lines = []
        for record, fields in pairs:
            lines.append(json.dumps(record.to_json(link_image(record, self.dir)) | fields) + "\n")
        with open(self.dir / PAIRS_FILE, "a") as f:
            f.write("".join(lines))
            f.flush()
        return len(lines)


def mine_pairs(
    policy: str,
    data: str,
    out: str,
    reward: FrozenReward,
    num_generations: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    min_margin: float = 0.1,
    limit: int | None = None,
    batch_size: int = 16,
    prompt: str = prompt_texts.DEFAULT_CAPTION_PROMPT,
    seed: int = 0,
) -> dict:
    """Sample `num_generations` captions per image of `data` with `policy`, score them with
    `reward`, and write the pairs to the directory `out` (atomically: all or nothing).

    Args:
        policy: captioner export directory (or Hub id).
        data: JSONL file in the documented format (its MCQs feed QA rewards).
        out: output directory; gets `pairs.jsonl` and `images/`.
        reward: a reward module, e.g. `lit_caprl.rewards.CapRLQAReward`.
        min_margin: keep an image's pair only if best - worst reward >= this.
        limit: use the first `limit` records only.
    """
    torch.manual_seed(seed)
    config = RolloutConfig(num_generations, max_new_tokens, temperature)
    adapter = load_model(policy)
    records = load_records(data)[0][:limit]
    kept, margins = 0, []
    with atomic_dir(out) as tmp:
        writer = PairWriter(tmp)
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            images = [r.load_image() for r in chunk]
            ro = sample(adapter, reward, images, [prompt] * len(chunk), chunk, config)
            rewards = ro.group_rewards.cpu()
            margins += (rewards.max(1).values - rewards.min(1).values).tolist()
            kept += writer.append(mine_groups(chunk, ro.texts, rewards, min_margin, policy))
        q = torch.quantile(torch.tensor(margins), torch.tensor([0.5, 0.9, 1.0])).tolist()
        summary = {
            "out": str(Path(out) / PAIRS_FILE),
            "images": len(records),
            "pairs": kept,
            "margin_p50_p90_max": [round(x, 4) for x in q],
        }
        print(json.dumps(summary))
        if kept == 0:
            spread = summary["margin_p50_p90_max"]
            raise ValueError(
                f"no image's best-worst reward margin reached min_margin={min_margin}; "
                f"margins (p50, p90, max) were {spread}: lower min_margin"
            )
    return summary
