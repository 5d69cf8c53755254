"""Loading policies and readers: one `from_pretrained` route for tiny local models and the Hub.

Patch embeddings that are a Conv3d with stride = kernel (Qwen2-VL family) load as the matmul
they are (`ConvAsLinear`): same weights and outputs, and PyTorch's CPU conv3d backward is
several times slower than the matmul's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from lit_caprl.errors import MissingPath
from lit_caprl.models.adapter import VLMAdapter
from lit_caprl.models.lora import LoRA, add_adapters
from lit_caprl.models.paths import resolve


class ConvAsLinear(torch.nn.Module):
    """A Conv3d whose stride equals its kernel, computed as one matmul over flattened patches.
    It keeps the conv's `weight` (same name and shape), so checkpoints do not change."""

    def __init__(self, conv: torch.nn.Conv3d) -> None:
        super().__init__()
        self.weight = conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.weight.flatten(1))


def patches_as_matmul(model: torch.nn.Module) -> None:
    """Swap every non-overlapping Conv3d patch embedding (`patch_embed.proj`) for `ConvAsLinear`."""
    for name, module in model.named_modules():
        conv = getattr(module, "proj", None)
        if name.endswith("patch_embed") and isinstance(conv, torch.nn.Conv3d) and conv.bias is None:
            if tuple(conv.kernel_size) == tuple(conv.stride) and conv.padding == (0, 0, 0) and conv.groups == 1:
                module.proj = ConvAsLinear(conv)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    quantize: str | None = None,
) -> VLMAdapter:
    """Model + processor (vision models) or tokenizer (text-only readers) wrapped in the adapter.
    `attn_implementation=None` picks PyTorch's fused attention ("sdpa"), under which every
    recipe was tuned; `quantize="nf4"` loads the weights in bitsandbytes 4-bit (the frozen base
    of QLoRA)."""
    source = resolve(name_or_path)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if quantize is not None:
        if quantize != "nf4":
            raise ValueError(f"quantize must be 'nf4' or None, got {quantize!r}")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
        )
    kwargs["attn_implementation"] = attn_implementation or "sdpa"
    if hasattr(config, "vision_config"):
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        processor = load_tokenizer(source, trust_remote_code)
    if quantize is not None:
        _keep_4bit_trainable(model)
    patches_as_matmul(model)
    return VLMAdapter(model, processor)


def _keep_4bit_trainable(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for its CPU inference kernel on the first eval-mode
    forward (e.g. rollout generation). That kernel is not autograd-aware: afterwards a training
    forward fails, or gradients stop flowing to the LoRA adapters below. Keep the trainable path."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except that a tokenizer saved as a plain `tokenizers` backend is loaded as
    one: for some model types (qwen2) AutoTokenizer would rebuild it as that family's BPE
    tokenizer and silently drop every word of a word-level vocabulary."""
    declared = get_tokenizer_config(source).get("tokenizer_class")
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_policy(
    model: str,
    init_from: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    lora: LoRA | None = None,
    gradient_checkpointing: bool = False,
) -> VLMAdapter:
    """The stage-chaining rule: `init_from` supplies weights only, never optimizer state or
    hyper-parameters. It is a `save_pretrained` export directory (used as the model), a peft
    adapter directory (its adapters on top of `model`, and they keep training), or a Lightning
    `.ckpt`, whose `policy.*` weights are loaded into `model`. `lora` adds fresh adapters."""
    quantize = lora.quantize if lora is not None else None
    if init_from is not None and (Path(init_from) / "adapter_config.json").is_file():
        adapter = load_model(model, dtype, trust_remote_code, quantize=quantize)
        wrapped = PeftModel.from_pretrained(adapter.model, init_from, is_trainable=True)
        return _finish(VLMAdapter(wrapped, adapter.processor), None, gradient_checkpointing)
    if init_from is None or Path(init_from).is_dir():
        return _finish(
            load_model(init_from or model, dtype, trust_remote_code, quantize=quantize), lora, gradient_checkpointing
        )
    ckpt = Path(init_from)
    if not ckpt.is_file():
        raise MissingPath(f"init_from {init_from!r} is neither an export directory nor a checkpoint file")
    adapter = load_model(model, dtype, trust_remote_code, quantize=quantize)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "policy."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{ckpt}: checkpoint has no '{prefix}*' weights to initialise from")
    adapter.model.load_state_dict(weights, strict=True)
    return _finish(adapter, lora, gradient_checkpointing)


def load_export(path: str, base: str | None = None, dtype: str = "float32") -> VLMAdapter:
    """A trained export for inference: a `save_pretrained` directory, or peft adapters on `base`
    (default: the base model their `adapter_config.json` names)."""
    adapters = Path(path) / "adapter_config.json"
    if adapters.is_file():
        base = base or json.loads(adapters.read_text())["base_model_name_or_path"]
        return load_policy(base, init_from=path, dtype=dtype)
    return load_model(path, dtype)


def _finish(adapter: VLMAdapter, lora: LoRA | None, gradient_checkpointing: bool) -> VLMAdapter:
    """Add LoRA adapters and switch on gradient checkpointing (recompute activations in backward)."""
    if gradient_checkpointing:
        adapter.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        adapter = VLMAdapter(add_adapters(adapter.model, lora), adapter.processor)
    return adapter
