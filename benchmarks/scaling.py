"""Where a lit_caprl GRPO step's time goes as G and the completion length grow.

Same model, images, reward and settings as grpo_vs_trl.py (4 prompts, beta 0.04, exactly
`length` completion tokens). Each step is split into generation, reward, reference
log-probs and update (loss + backward + optimizer); the vision encoder's time (in every
pass) is reported too, with its share of the step: it falls as G grows, because each image
is encoded once per group.

    python benchmarks/scaling.py [--steps 6] [--quick]

Writes benchmarks/results/scaling.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import environment, lit_grpo

PHASES = ("generation", "reward", "reference_logprobs", "update", "other")
EVENTS: list[tuple[float, str, float]] = []  # (end time, phase, seconds)


def instrument() -> None:
    """Wrap the functions each phase runs in. `sampling` is generation plus prompt encoding,
    caption decoding and the reward; the reward phase is sampling minus generation."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    from lit_caprl import rollout
    from lit_caprl.models.adapter import VLMAdapter
    from lit_caprl.stages import GRPOStage

    def timed(owner, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            end = time.perf_counter()
            EVENTS.append((end, phase, end - start))
            return out

        setattr(owner, name, wrapper)

    timed(VLMAdapter, "generate", "generation")
    timed(rollout, "sample", "sampling")
    timed(GRPOStage, "reference_logprobs", "reference_logprobs")
    timed(GRPOStage, "training_step", "update")
    timed(qwen.Qwen2_5_VisionTransformerPretrainedModel, "forward", "vision")


def measure(model: str, g: int, length: int, steps: int, warmup: int) -> dict:
    EVENTS.clear()
    stamps: list[float] = []
    lit_grpo(model, 4, g, length, 0.04, steps, stamps)
    per_step: list[dict[str, float]] = []
    for start, end in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False):
        phases: dict[str, float] = defaultdict(float, step=end - start)
        for t, phase, seconds in EVENTS:
            if start < t <= end:
                phases[phase] += seconds
        phases["reward"] = phases["sampling"] - phases["generation"]
        phases["update"] -= phases["reference_logprobs"]  # the training step computes them first
        phases["other"] = phases["step"] - sum(phases[p] for p in PHASES[:-1])
        per_step.append(phases)
    row = {"g": g, "length": length}
    for phase in ("step", *PHASES, "vision"):
        row[f"{phase}_s"] = statistics.median(p[phase] for p in per_step)
    row["vision_share"] = row["vision_s"] / row["step_s"]
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, fixed in ((axes[0], "g", ("length", 64)), (axes[1], "length", ("g", 8))):
        sel = sorted((r for r in rows if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [str(r[key]) for r in sel]
        bottom = [0.0] * len(sel)
        for phase in PHASES:
            values = [r[f"{phase}_s"] for r in sel]
            ax.bar(xs, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xlabel("G (captions per image)" if key == "g" else "completion tokens")
        ax.set_ylabel("seconds per step")
        ax.set_title(f"step time vs {key} ({fixed[0]}={fixed[1]}, 4 images)")
        ax.legend()
    sel = sorted((r for r in rows if r["length"] == 64), key=lambda r: r["g"])
    axes[2].plot([r["g"] for r in sel], [100 * r["vision_share"] for r in sel], marker="o")
    axes[2].set_xlabel("G (captions per image)")
    axes[2].set_ylabel("% of step in the vision encoder")
    axes[2].set_title("vision encoder share (images encoded once per group)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="two small configs, 3 steps: checks that it runs")
    p.add_argument("--model", help="a Qwen2.5-VL save_pretrained dir (default: build the small tiny model)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling.json"))
    a = p.parse_args()
    torch.set_num_threads(2)
    grid = [(g, 64) for g in (2, 4, 8, 16)] + [(8, n) for n in (32, 128)]
    if a.quick:
        grid, a.steps, a.warmup = [(2, 16), (4, 16)], 3, 1
    instrument()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from lit_caprl.models.tiny import make_tiny

        model = a.model or str(make_tiny("qwen2_5_vl", "small", Path(tmp) / "policy"))
        for g, length in grid:
            row = measure(model, g, length, a.steps, a.warmup)
            rows.append(row)
            parts = "  ".join(f"{ph} {row[f'{ph}_s']:.3f}" for ph in PHASES)
            print(
                f"G={g:2d} len={length:3d}: step {row['step_s']:.3f} s  ({parts})  vision {row['vision_s']:.3f} s "
                f"= {100 * row['vision_share']:.1f}%",
                flush=True,
            )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"prompts_per_step": 4, "beta": 0.04, "steps": a.steps, "environment": environment(), "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
