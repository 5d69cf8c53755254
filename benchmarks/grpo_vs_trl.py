"""GRPO step throughput: lit_caprl against TRL's GRPOTrainer, side by side, on the same model.

Both train the same locally built Qwen2.5-VL ("small": text hidden 256 x 4 layers, vision
depth 4, the size of the TRL anchor in ../shared/anchors) on the same synthetic images, with
the same reward (distinct colour words / 4) and settings: G=8, exactly 64 completion tokens
(`min_new_tokens=64`), temperature 1, one inner epoch, lr 1e-5, dapo loss, fp32, 2 threads.
Each measurement is a fresh process; lit_caprl and TRL alternate, `--repeats` times per config.
A step's time is the wall time between consecutive step ends, median over the steps after
`--warmup`.

A third process alternating with them measures the step's floor on this CPU: the matrix
products that no implementation can skip, timed alone. Through the decoder's linear layers
(4 x 7 and the LM head; the vision tower's share is under 2%, `scaling.py`): 64 decode steps
of prompts x G rows (generation), then a forward (the reference, when beta > 0) and a forward
and backward (the update) over the completion tokens plus each distinct prompt once. No
attention, norms, sampling or optimizer. TRL's step over the floor is the most any
implementation could gain on it here.

    pip install -e ".[bench]"      # TRL, only needed here
    python benchmarks/grpo_vs_trl.py [--repeats 3] [--steps 12] [--quick]

Writes benchmarks/results/grpo_vs_trl.json: one entry per config with completions/s and
peak RSS for each side, their ratio, the floor by part and the most it allows (`max_ratio`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import (
    color_reward,
    environment,
    fresh_process,
    images,
    linear_layers,
    linear_products,
    lit_grpo,
    peak_rss_mb,
    step_times,
    timed_parts,
)

CONFIGS = [(4, 0.04), (4, 0.0), (1, 0.04), (1, 0.0)]  # (prompts per step, beta); G = 8
G, LENGTH = 8, 64
# TRL 1.16's TrainingArguments default to bf16=True and gradient_checkpointing=True. Both sides
# here train fp32 weights that fit in memory many times over, so TRL at its best (and as the
# anchors in ../shared/anchors ran it) turns both off: bf16 autocast on a CPU without
# AVX512-BF16 emulates bf16 matmuls (slow in backward), and checkpointing recomputes forwards.
# `--trl-defaults` keeps TRL's defaults, to measure what they cost.
TRL_BEST = dict(bf16=False, gradient_checkpointing=False)


def run_lit(model: str, prompts: int, beta: float, steps: int) -> list[float]:
    stamps: list[float] = []
    lit_grpo(model, prompts, G, LENGTH, beta, steps, stamps)
    return step_times(stamps)


def run_trl(model: str, prompts: int, beta: float, steps: int, defaults: bool = False) -> list[float]:
    from datasets import Dataset
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT

    def reward(completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return color_reward(texts)

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs) -> None:
            stamps.append(time.perf_counter())

    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_CAPTION_PROMPT}]}]
    data = Dataset.from_dict({"prompt": [turn] * 64, "image": images(64)})
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=G * prompts,
            num_generations=G,
            max_completion_length=LENGTH,
            temperature=1.0,
            num_iterations=1,
            learning_rate=1e-5,
            beta=beta,
            loss_type="dapo",
            scale_rewards="group",
            max_steps=steps,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            generation_kwargs={"min_new_tokens": LENGTH},
            seed=0,
            disable_tqdm=True,
            max_grad_norm=1.0,
            **({} if defaults else TRL_BEST),
        )
        processor = AutoProcessor.from_pretrained(model)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=data,
            processing_class=processor,
            callbacks=[Stamp()],
        )
        trainer.train()
    return step_times(stamps)


def run_floor(model: str, prompts: int, beta: float, steps: int) -> dict[str, list[float]]:
    """Seconds of a step's unavoidable matrix products (see the module docstring), `steps`
    times, by part."""
    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT
    from lit_caprl.models.loading import load_model

    adapter = load_model(model)
    decoder = linear_layers(adapter.model, vision=False)
    prompt = adapter.encode_prompts([adapter.chat(DEFAULT_CAPTION_PROMPT, True)], images(1)).input_ids.shape[1]
    tokens = prompts * (G * LENGTH + prompt)
    parts = {"generation": lambda: [linear_products(decoder, prompts * G) for _ in range(LENGTH)]}
    if beta > 0:
        parts["reference"] = lambda: linear_products(decoder, tokens)
    parts["update"] = lambda: linear_products(decoder, tokens, backward=True)
    return timed_parts(parts, steps)


def worker(a: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(2)
    if a.worker == "floor":
        times = {
            name: statistics.median(t[a.warmup :]) for name, t in run_floor(a.model, a.prompts, a.beta, a.steps).items()
        }
        print(json.dumps({"step_s": sum(times.values()), "parts_s": times, "peak_rss_mb": peak_rss_mb()}))
        return
    if a.worker == "lit_caprl":
        steps = run_lit(a.model, a.prompts, a.beta, a.steps)
    else:
        steps = run_trl(a.model, a.prompts, a.beta, a.steps, a.trl_defaults)
    steps = steps[a.warmup - 1 :]
    print(json.dumps({"step_s": statistics.median(steps), "peak_rss_mb": peak_rss_mb()}))


def measure(impl: str, model: str, prompts: int, beta: float, a: argparse.Namespace) -> dict:
    argv = ["--worker", impl, "--model", model, "--prompts", str(prompts), "--beta", str(beta)]
    argv += ["--steps", str(a.steps), "--warmup", str(a.warmup), *(["--trl-defaults"] if a.trl_defaults else [])]
    return fresh_process(__file__, argv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="step times dropped at the start")
    p.add_argument("--quick", action="store_true", help="one config, one repeat, 4 steps: checks that it runs")
    p.add_argument("--trl-defaults", action="store_true", help="TRL with its own bf16/checkpointing defaults")
    p.add_argument("--model", help="a Qwen2.5-VL save_pretrained dir (default: build the small tiny model)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "grpo_vs_trl.json"))
    p.add_argument("--worker", choices=["lit_caprl", "trl", "floor"], help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    configs = CONFIGS[:1] if a.quick else CONFIGS
    if a.quick:
        a.repeats, a.steps, a.warmup = 1, 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        from lit_caprl.models.tiny import make_tiny

        model = a.model or str(make_tiny("qwen2_5_vl", "small", Path(tmp) / "policy"))
        results = []
        for prompts, beta in configs:
            runs: dict[str, list[dict]] = {"lit_caprl": [], "trl": [], "floor": []}
            for _ in range(a.repeats):
                for impl in runs:  # alternate, so drifts in machine speed hit every side alike
                    runs[impl].append(measure(impl, model, prompts, beta, a))
            entry = {"prompts_per_step": prompts, "num_generations": G, "beta": beta, "completion_tokens": LENGTH}
            for impl in ("lit_caprl", "trl"):
                rs = runs[impl]
                step = statistics.median(r["step_s"] for r in rs)
                entry |= {
                    f"{impl}_step_s": step,
                    f"{impl}_completions_per_s": G * prompts / step,
                    f"{impl}_step_s_per_repeat": [r["step_s"] for r in rs],
                    f"{impl}_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                }
            entry["ratio"] = entry["lit_caprl_completions_per_s"] / entry["trl_completions_per_s"]
            floor = sorted(runs["floor"], key=lambda r: r["step_s"])[len(runs["floor"]) // 2]  # the median repeat
            entry |= {"floor_parts_s": floor["parts_s"], "floor_step_s": floor["step_s"]}
            entry["max_ratio"] = entry["trl_step_s"] / floor["step_s"]
            results.append(entry)
            print(
                f"{prompts}x{G} beta={beta}: lit_caprl {entry['lit_caprl_completions_per_s']:6.1f} completions/s "
                f"({entry['lit_caprl_peak_rss_mb']:.0f} MB), TRL {entry['trl_completions_per_s']:6.1f} "
                f"({entry['trl_peak_rss_mb']:.0f} MB), ratio {entry['ratio']:.2f}x; floor {entry['floor_step_s']:.3f} s"
                f" a step (lit_caprl {entry['lit_caprl_step_s']:.3f}, TRL {entry['trl_step_s']:.3f}): at most"
                f" {entry['max_ratio']:.2f}x TRL",
                flush=True,
            )
    meta = {
        "repeats": a.repeats,
        "steps": a.steps,
        "warmup_dropped": a.warmup,
        "threads": 2,
        "model": a.model or "make_tiny qwen2_5_vl small (built here)",
        "trl_settings": "TRL defaults" if a.trl_defaults else TRL_BEST,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": meta, "environment": environment(), "results": results}
    Path(a.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
