"""The training stages. Loaded on first use, so that importing `lit_caprl.stages.losses` (pure
math, used by `lit_caprl.rollout`) does not pull in the stages, which import the rollout."""

from importlib import import_module

__all__ = ["DPOStage", "GRPOStage", "SFTStage"]
_MODULES = {"DPOStage": "dpo", "GRPOStage": "grpo", "SFTStage": "sft"}


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(import_module(f"lit_caprl.stages.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'lit_caprl.stages' has no attribute {name!r}")
