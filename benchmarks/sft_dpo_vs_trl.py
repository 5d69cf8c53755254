"""SFT and DPO step throughput: lit_caprl against TRL's SFTTrainer and DPOTrainer, side by side.

Both train the same locally built Qwen2.5-VL ("small", the model of the TRL anchors in
../shared/anchors) on the same 256 ShapesWorld scenes with the same prompt, fp32, 2 threads:
- SFT: image -> gold caption, loss on the caption tokens only (TRL: prompt/completion data,
  its default completion-only loss), batch 16, lr 1e-4, AdamW, grad-norm clip 1.0;
- DPO: chosen = the gold caption, rejected = the same with one mistake (`corrupted_caption`),
  batch 8 pairs, lr 1e-6, beta 0.1, sigmoid loss, a frozen reference copy of the policy.
TRL runs as at its best for this case, as in the anchors: bf16 and gradient checkpointing off
(`TRL_BEST` in grpo_vs_trl.py says why). Each measurement is a fresh process, the two sides
alternating; a step's time is the wall time between consecutive step ends, median over the
steps after `--warmup`, then the median over `--repeats`.

A third process in the same alternation times the step's floor, as grpo_vs_trl.py does: the
matrix products of every linear layer (decoder, LM head, vision tower) over a batch's real
tokens and image patches, forward and backward (and the reference's forward, for DPO), each
prompt once per pair, nothing else; TRL's step over it is the most any implementation could
gain here.

    pip install -e ".[bench]" -c benchmarks/constraints.txt
    python benchmarks/sft_dpo_vs_trl.py [--repeats 3] [--steps 15] [--quick]

Writes benchmarks/results/sft_dpo_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import environment, fresh_process, linear_layers, linear_products, peak_rss_mb, step_times, timed_parts
from grpo_vs_trl import TRL_BEST

BATCH = {"sft": 16, "dpo": 8}
LR = {"sft": 1e-4, "dpo": 1e-6}
SCENES = 256


def write_data(root: Path) -> Path:
    """ShapesWorld scenes, and the DPO pairs file beside them (gold vs one-mistake caption)."""
    from lit_caprl.data.shapes import ShapeObject, corrupted_caption, write_dataset

    write_dataset(root, SCENES, 16, seed=0)
    rng = random.Random(0)
    with open(root / "train.jsonl") as f, open(root / "pairs.jsonl", "w") as out:
        for line in f:
            record = json.loads(line)
            objects = [ShapeObject(**o) for o in record["meta"]["objects"]]
            pair = {"chosen": record["captions"][0], "rejected": corrupted_caption(rng, objects)}
            out.write(json.dumps(record | pair) + "\n")
    return root


def run_lit(stage: str, model: str, data: Path, steps: int) -> list[float]:
    import lightning as L

    from lit_caprl.data import CaptionData, PairData
    from lit_caprl.stages import DPOStage, SFTStage
    from lit_caprl.stages.optim import Optim

    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            stamps.append(time.perf_counter())

    L.seed_everything(0)
    optim = Optim(lr=LR[stage], max_grad_norm=1.0)
    if stage == "sft":
        module = SFTStage(model, optim=optim)
        datamodule = CaptionData(str(data / "train.jsonl"), batch_size=BATCH[stage])
    else:
        module = DPOStage(model, beta=0.1, loss_type="sigmoid", optim=optim)
        datamodule = PairData(str(data / "pairs.jsonl"), batch_size=BATCH[stage])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Stamp()],
    )
    trainer.fit(module, datamodule=datamodule)
    return step_times(stamps)


def run_trl(stage: str, model: str, data: Path, steps: int) -> list[float]:
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs) -> None:
            stamps.append(time.perf_counter())

    records = [json.loads(line) for line in open(data / "pairs.jsonl")]
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_CAPTION_PROMPT}]}]

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    columns = {
        "prompt": [turn] * len(records),
        "images": [[Image.open(data / r["image"]).convert("RGB")] for r in records],
    }
    if stage == "sft":
        columns["completion"] = [said(r["captions"][0]) for r in records]
    else:
        columns |= {"chosen": [said(r["chosen"]) for r in records], "rejected": [said(r["rejected"]) for r in records]}
    common = dict(
        per_device_train_batch_size=BATCH[stage],
        learning_rate=LR[stage],
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        max_grad_norm=1.0,
        **TRL_BEST,
    )
    processor = AutoProcessor.from_pretrained(model)
    with tempfile.TemporaryDirectory() as out:
        if stage == "sft":
            args = SFTConfig(output_dir=out, **common)
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns))
        else:
            args = DPOConfig(output_dir=out, beta=0.1, loss_type=["sigmoid"], **common)
            trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns))
        trainer.processing_class = processor if trainer.processing_class is None else trainer.processing_class
        trainer.add_callback(Stamp())
        trainer.train()
    return step_times(stamps)


def run_floor(stage: str, model: str, data: Path, steps: int) -> dict[str, list[float]]:
    """Seconds of a step's unavoidable matrix products (see the module docstring), `steps`
    times, by part: a batch of the data's mean prompt, caption and image sizes."""
    from PIL import Image

    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT
    from lit_caprl.models.loading import load_model

    adapter = load_model(model)
    decoder, vision = linear_layers(adapter.model, vision=False), linear_layers(adapter.model, vision=True)
    records = [json.loads(line) for line in open(data / "pairs.jsonl")]
    image = Image.open(data / records[0]["image"]).convert("RGB")  # every scene has the same size
    prompt = adapter.encode_prompts([adapter.chat(DEFAULT_CAPTION_PROMPT, True)], [image])
    patches = prompt.pixel_values.shape[0]

    def tokens(key: str) -> float:  # mean caption tokens with EOS
        texts = [r["captions"][0] if key == "gold" else r[key] for r in records]
        return adapter.encode_completions(texts).mask.sum().item() / len(texts)

    captions = tokens("gold") if stage == "sft" else tokens("chosen") + tokens("rejected")
    text = round(BATCH[stage] * (prompt.input_ids.shape[1] + captions))
    patch_rows = BATCH[stage] * patches

    def forward_backward(backward: bool) -> None:
        linear_products(decoder, text, backward)
        linear_products(vision, patch_rows, backward)

    parts = {"reference": lambda: forward_backward(False)} if stage == "dpo" else {}
    parts["update"] = lambda: forward_backward(True)
    return timed_parts(parts, steps)


def worker(a: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(2)
    if a.worker == "floor":
        parts = run_floor(a.stage, a.model, Path(a.data), a.steps)
        times = {name: statistics.median(t[a.warmup :]) for name, t in parts.items()}
        print(json.dumps({"step_s": sum(times.values()), "parts_s": times, "peak_rss_mb": peak_rss_mb()}))
        return
    run = run_lit if a.worker == "lit_caprl" else run_trl
    steps = run(a.stage, a.model, Path(a.data), a.steps)[a.warmup - 1 :]
    print(json.dumps({"step_s": statistics.median(steps), "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2, help="step times dropped at the start")
    p.add_argument("--quick", action="store_true", help="one repeat of 5 steps per stage: checks that it runs")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sft_dpo_vs_trl.json"))
    p.add_argument("--worker", choices=["lit_caprl", "trl", "floor"], help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=list(BATCH), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.quick:
        a.repeats, a.steps, a.warmup = 1, 5, 2
    with tempfile.TemporaryDirectory() as tmp:
        from lit_caprl.models.tiny import make_tiny

        model = str(make_tiny("qwen2_5_vl", "small", Path(tmp) / "policy"))
        data = write_data(Path(tmp) / "shapes")
        results = []
        for stage in BATCH:
            runs: dict[str, list[dict]] = {"lit_caprl": [], "trl": [], "floor": []}
            for _ in range(a.repeats):
                for impl in runs:  # alternate, so drifts in machine speed hit every side alike
                    argv = ["--worker", impl, "--stage", stage, "--model", model, "--data", str(data)]
                    argv += ["--steps", str(a.steps), "--warmup", str(a.warmup)]
                    runs[impl].append(fresh_process(__file__, argv))
            unit = "examples" if stage == "sft" else "pairs"
            entry = {"stage": stage, "batch": BATCH[stage], "unit": unit}
            for impl in ("lit_caprl", "trl"):
                rs = runs[impl]
                step = statistics.median(r["step_s"] for r in rs)
                entry |= {
                    f"{impl}_step_s": step,
                    f"{impl}_{unit}_per_s": BATCH[stage] / step,
                    f"{impl}_step_s_per_repeat": [r["step_s"] for r in rs],
                    f"{impl}_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                }
            entry["ratio"] = entry["trl_step_s"] / entry["lit_caprl_step_s"]
            floor = sorted(runs["floor"], key=lambda r: r["step_s"])[len(runs["floor"]) // 2]  # the median repeat
            entry |= {"floor_parts_s": floor["parts_s"], "floor_step_s": floor["step_s"]}
            entry["max_ratio"] = entry["trl_step_s"] / floor["step_s"]
            results.append(entry)
            print(
                f"{stage}: lit_caprl {entry[f'lit_caprl_{unit}_per_s']:6.1f} {unit}/s "
                f"({entry['lit_caprl_peak_rss_mb']:.0f} MB), TRL {entry[f'trl_{unit}_per_s']:6.1f} "
                f"({entry['trl_peak_rss_mb']:.0f} MB), ratio {entry['ratio']:.2f}x; floor {entry['floor_step_s']:.3f} s"
                f" a step (lit_caprl {entry['lit_caprl_step_s']:.3f}, TRL {entry['trl_step_s']:.3f}): at most"
                f" {entry['max_ratio']:.2f}x TRL",
                flush=True,
            )
    settings = {"repeats": a.repeats, "steps": a.steps, "warmup_dropped": a.warmup, "threads": 2, "scenes": SCENES}
    settings |= {"batch": BATCH, "lr": LR, "dpo_beta": 0.1, "trl_settings": TRL_BEST}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "environment": environment(), "results": results}
    Path(a.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
