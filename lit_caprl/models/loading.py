"""Loading policies and readers: one `from_pretrained` route for tiny local models and the Hub."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from lit_caprl.models.adapter import VLMAdapter

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve(name_or_path: str) -> str:
    """A local directory, or a Hub id (`owner/name`). A missing local path is an error, never
    silently replaced by something else."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"model path {name_or_path!r} is a file; expected a save_pretrained directory")
    if _HUB_ID.fullmatch(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return name_or_path
    raise FileNotFoundError(
        f"model directory {name_or_path!r} does not exist (resolved to {path.resolve()}); "
        "build one with `lit-caprl make-tiny` or give a Hub id like Qwen/Qwen2.5-VL-3B-Instruct"
    )


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
) -> VLMAdapter:
    """Model + processor (vision models) or tokenizer (text-only readers) wrapped in the adapter."""
    source = resolve(name_or_path)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    kwargs = dict(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if hasattr(config, "vision_config"):
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        processor = load_tokenizer(source, trust_remote_code)
    return VLMAdapter(model, processor)


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except that a tokenizer saved as a plain `tokenizers` backend is loaded as
    one: for some model types (qwen2) AutoTokenizer would rebuild it as that family's BPE
    tokenizer and silently drop every word of a word-level vocabulary."""
    declared = get_tokenizer_config(source).get("tokenizer_class")
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_policy(
    model: str, init_from: str | None = None, dtype: str = "float32", trust_remote_code: bool = False
) -> VLMAdapter:
    """The stage-chaining rule: `init_from` supplies weights only, never optimizer state or
    hyper-parameters. It is a `save_pretrained` export directory (used as the model) or a
    Lightning `.ckpt`, whose `policy.*` weights are loaded into `model`."""
    if init_from is None or Path(init_from).is_dir():
        return load_model(init_from or model, dtype, trust_remote_code)
    ckpt = Path(init_from)
    if not ckpt.is_file():
        raise FileNotFoundError(f"init_from {init_from!r} is neither an export directory nor a checkpoint file")
    adapter = load_model(model, dtype, trust_remote_code)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "policy."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{ckpt}: checkpoint has no '{prefix}*' weights to initialise from")
    adapter.model.load_state_dict(weights, strict=True)
    return adapter
