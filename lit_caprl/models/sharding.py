"""Multi-rank plumbing: FSDP2 sharding of HF models and the collectives every stage shares.

Sharding follows each model's own `_no_split_modules` (Qwen2.5-VL: decoder layers and vision
blocks; Qwen2: decoder layers), so a new model family needs no entry here. Under DDP nothing is
sharded and gradients are averaged explicitly (see `average_gradients`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from transformers import PreTrainedModel


def block_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the blocks HF says must not be split: the units FSDP2 shards."""
    names: set[str] = set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            names.update(m._no_split_modules or [])
    return names


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """`fully_shard` each block (decoder layers, vision blocks), then the root. Idempotent."""
    if isinstance(model, FSDPModule):
        return model
    blocks = block_classes(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} declares no _no_split_modules; cannot choose FSDP2 units")
    for m in list(model.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def root_unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Hold the root unit's parameters (embeddings, patch embedding, projector) gathered.
    `generate` calls parts of the model (e.g. `get_image_features`) outside the root's forward,
    where FSDP2's hooks would not gather them; the blocks still gather in their own forwards."""
    if not is_sharded(model):
        yield
        return
    model._get_fsdp_state()._lazy_init()  # claim the root before any inner unit runs first
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The unsharded weights on CPU, for `save_pretrained`. A collective: every rank calls it.
    None for a model that is not sharded (it already holds full tensors)."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_ranks(flag: bool) -> bool:
    """True only if `flag` holds on every rank, so ranks take the same branch (skip a step,
    sample another round) and their collectives stay matched."""
    if not distributed():
        return flag
    t = torch.tensor(int(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t)


def max_over_ranks(n: int) -> int:
    if not distributed():
        return n
    t = torch.tensor(n)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """DDP for manual optimization: backward passes run under `no_sync` (DDP's reducer syncs only
    the first backward after a forward through its wrapper, and GRPO runs many), then the
    accumulated gradients are averaged here in one flat all-reduce before the optimizer step."""
    if not distributed():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:  # a parameter unused on this rank still takes part, with a zero gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
