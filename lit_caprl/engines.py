"""Rollout engines: what samples the G captions per image.

One small protocol: `sync` the engine to the policy's current weights, then `generate` G
completions per prompt as a `Completions` batch whose rows i*G .. i*G+G-1 belong to prompt i.
The training forward always re-scores completions with the policy itself, so an engine only
has to produce token ids.

- `HFEngine` (default): the policy's own `generate`; nothing to sync.
- `VLLMEngine`: vLLM in the training process (colocated), used by `engine: auto` when vllm is
  installed and a GPU exists. Weights are copied from the policy before every rollout.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.batches import Completions, PromptBatch
from lit_caprl.models.sharding import full_state_dict


@dataclass
class Request:
    """One rollout's prompts, in both forms an engine may want."""

    texts: list[str]  # chat-rendered prompts, one per image
    images: list[Image.Image]
    batch: PromptBatch  # the same prompts encoded, each repeated G times
    g: int
    max_new_tokens: int
    temperature: float
    top_p: float


class RolloutEngine(Protocol):
    def sync(self, adapter: VLMAdapter) -> None:
        """Make the next `generate` sample from the policy's current weights."""

    def generate(self, adapter: VLMAdapter, request: Request) -> Completions:
        """G completions per prompt, rows grouped by prompt."""


class HFEngine:
    """Sampling with the policy's own `generate` (works everywhere, incl. FSDP2 lock-step)."""

    def sync(self, adapter: VLMAdapter) -> None:
        pass

    def generate(self, adapter: VLMAdapter, request: Request) -> Completions:
        return adapter.generate(
            request.batch, request.max_new_tokens, request.temperature, request.top_p, group=request.g
        )


class VLLMEngine:
    """vLLM colocated with training (one engine per rank, tensor parallel 1).

    Args:
        model: the policy's `save_pretrained` directory or Hub id (architecture and tokenizer).
        gpu_memory_utilization: the share of GPU memory vLLM may take next to training.
    """

    def __init__(self, model: str, gpu_memory_utilization: float = 0.3, dtype: str = "bfloat16") -> None:
        from vllm import LLM

        self.llm = LLM(
            model=model,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            enforce_eager=True,
            limit_mm_per_prompt={"image": 1},
        )

    def sync(self, adapter: VLMAdapter) -> None:
        if hasattr(adapter.model, "peft_config"):
            raise ValueError("VLLMEngine copies full weights; a LoRA policy needs engine 'hf' (or merged weights)")
        state = full_state_dict(adapter.model) or adapter.base.state_dict()
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(state.items())
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def generate(self, adapter: VLMAdapter, request: Request) -> Completions:
        from vllm import SamplingParams

        params = SamplingParams(
            n=request.g, max_tokens=request.max_new_tokens, temperature=request.temperature, top_p=request.top_p
        )
        inputs = [
            {"prompt": t, "multi_modal_data": {"image": im}}
            for t, im in zip(request.texts, request.images, strict=True)
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        rows = [list(c.token_ids) for out in outputs for c in out.outputs]
        ids = torch.full((len(rows), request.max_new_tokens), adapter.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return adapter.completions_from_ids(ids.to(request.batch.input_ids.device))


def make_engine(name: str, model: str) -> RolloutEngine:
    """`hf`, `vllm`, or `auto` (vLLM when it is installed and a GPU exists, else HF)."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "auto":
        name = "vllm" if has_vllm and torch.cuda.is_available() else "hf"
    if name == "hf":
        return HFEngine()
    if name == "vllm":
        if not (has_vllm and torch.cuda.is_available()):
            raise RuntimeError(
                "engine 'vllm' needs the vllm package and a CUDA GPU "
                f"(vllm installed: {has_vllm}, GPU: {torch.cuda.is_available()}); use engine 'hf' or 'auto'"
            )
        return VLLMEngine(model)
    raise ValueError(f"engine must be hf, vllm or auto, got {name!r}")
