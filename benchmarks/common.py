"""What the GRPO benchmarks share: synthetic images, the colour-word reward, a lit_caprl GRPO run.

Only torch and PIL are imported at the top, so a TRL worker process loads nothing of ours
(its peak RSS is TRL's own)."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

import torch
from PIL import Image

COLORS = ("red", "green", "blue", "yellow")
PACKAGES = ("lit-caprl", "torch", "transformers", "lightning", "trl", "peft", "accelerate", "pyarrow", "pillow")
CONSTRAINTS = Path(__file__).parent / "constraints.txt"


def unpinned() -> dict[str, dict[str, str | None]]:
    """Installed packages whose version differs from `constraints.txt` (or that it lacks): an
    empty dict means the result ran in the pinned environment."""
    pins = dict(
        re.match(r"([^=\s]+)==(\S+)", line).groups()
        for line in CONSTRAINTS.read_text().splitlines()
        if re.match(r"[^#\s].*==", line)
    )
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pins = {norm(k): v for k, v in pins.items()}
    installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
    for tool in ("lit-caprl", "pip", "setuptools", "wheel"):  # ours, and the venv's own tools
        installed.pop(tool, None)
    return {
        n: {"installed": installed.get(n), "pinned": pins.get(n)}
        for n in sorted(set(pins) | set(installed))
        if installed.get(n) != pins.get(n)
    }


def environment() -> dict:
    """What a result was measured with: package versions, Python, the CPU and its thread count.
    Dependency releases change these numbers (TRL's GRPO step went from 1.1 s to 20 s between
    installs), so every result JSON records it."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "unpinned": unpinned(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_process(script: str, argv: list[str]) -> dict:
    """Run one measurement as `python script argv` in a new process; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def linear_layers(model: torch.nn.Module, vision: bool) -> list[torch.nn.Linear]:
    """A model's linear layers: its vision tower's (`vision`), or the decoder's and LM head's."""
    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ("visual" in n) == vision]


_INPUTS: dict[tuple[int, int], torch.Tensor] = {}


def linear_products(layers: list[torch.nn.Linear], rows: int, backward: bool = False) -> None:
    """Every layer's matrix product over `rows` tokens and, with `backward`, its two gradient
    products: what any implementation of a step must compute (a floor; see grpo_vs_trl.py).
    Inputs are drawn once per shape, so that only the products are timed."""
    for layer in layers:
        x = _INPUTS.setdefault((rows, layer.in_features), torch.randn(rows, layer.in_features))
        with torch.set_grad_enabled(backward):
            y = layer(x.requires_grad_(backward))
            if backward:
                y.backward(torch.ones_like(y))


def timed_parts(parts: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each part, `repeats` times, the parts one after another each time."""
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, part in parts.items():
            start = time.perf_counter()
            part()
            times[name].append(time.perf_counter() - start)
    return times


def color_reward(texts: list[str]) -> list[float]:
    """Distinct colour words in the caption, / 4: the TRL anchor's reward, as a plain function."""
    return [len(set(t.split()) & set(COLORS)) / 4 for t in texts]


def images(n: int) -> list[Image.Image]:
    """Seeded random 112x112 pictures: 16 image tokens each with the tiny tower's 28-px patches."""
    g = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(torch.randint(0, 256, (112, 112, 3), generator=g, dtype=torch.uint8).numpy()) for _ in range(n)
    ]


def step_times(stamps: list[float]) -> list[float]:
    """Wall time between consecutive step ends."""
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def lit_grpo(model: str, prompts: int, g: int, length: int, beta: float, steps: int, stamps: list[float]):
    """`steps` lit_caprl GRPO steps with exactly `length` completion tokens, appending each step
    end's time to `stamps` (a step includes its rollout, which runs at batch start)."""
    import lightning as L

    from lit_caprl.callbacks import RolloutCallback
    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT
    from lit_caprl.rewards import RewardOutput
    from lit_caprl.stages import GRPOStage
    from lit_caprl.stages.optim import Optim

    class ColorWords(torch.nn.Module):
        def forward(self, captions, records, step=0):
            values = torch.tensor(color_reward(captions))
            return RewardOutput(values, {"colors": values})

    class ImageData(L.LightningDataModule):
        def train_dataloader(self):
            rows = [{"image": im, "prompt": DEFAULT_CAPTION_PROMPT, "record": None} for im in images(64)]
            collate = lambda xs: {k: [x[k] for x in xs] for k in xs[0]}  # noqa: E731
            return torch.utils.data.DataLoader(rows, batch_size=prompts, shuffle=True, collate_fn=collate)

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            stamps.append(time.perf_counter())

    L.seed_everything(0)
    module = GRPOStage(
        model,
        ColorWords(),
        num_generations=g,
        max_new_tokens=length,
        temperature=1.0,
        beta=beta,
        mu=1,
        loss_type="dapo",
        scale_rewards="group",
        micro_batch_size=g * prompts,
        max_rollout_steps=steps,
        optim=Optim(lr=1e-5),
    )
    module.policy.generation_config.min_new_tokens = length
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RolloutCallback(engine="hf"), Stamp()],
    )
    trainer.fit(module, datamodule=ImageData())
    return module
