"""`lit-caprl plan`: the per-GPU memory of a `fit` config at its real scale, before renting GPUs.

Nothing is downloaded: a published model (Qwen2.5-VL-3B-Instruct, Qwen2.5-3B-Instruct) is built
from its published dimensions on the meta device, a local export from its `config.json`, so
parameter counts, dtypes and LoRA adapters are those `fit` would build. On top of them, per GPU:

- weights, gradients and AdamW states of the policy, sharded over the data-parallel ranks by
  FSDP2 (replicated under any other strategy), plus the two blocks FSDP2 holds gathered;
- the frozen parts: a GRPO/DPO reference copy (none with LoRA) and the replicated reader;
- activations of one micro-batch saved for backward (`activation_values` per token and layer;
  with activation checkpointing only each layer's input), plus the fp32 logits of scored tokens;
- the rollout's KV cache for G x prompts x (prompt + caption) tokens, and the reader's.

GRPO is planned phase by phase (rollout, reward, train), since each frees what the next needs.
Allocator fragmentation, CUDA context (~0.5 GB) and communication buffers are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
# Published dimensions (config.json of the Hub repositories), so nothing needs downloading.
_QWEN25_3B = dict(
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
)
PUBLISHED: dict[str, dict] = {
    "Qwen/Qwen2.5-3B-Instruct": dict(model_type="qwen2", **_QWEN25_3B),
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(
        model_type="qwen2_5_vl",
        text_config=_QWEN25_3B,
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        tie_word_embeddings=True,
    ),
}
# The reader's prompt around a caption (instruction, worked examples, question and options):
# CapRL's template is ~1,100 characters, ~300 tokens at ~4 characters per token.
READER_PROMPT_TOKENS = 300
# Logits of a scored token: the fp32 copy, its log-softmax and that one's gradient.
LOGIT_BYTES = 12


@dataclass
class Model:
    """What memory depends on, read off a model built on the meta device."""

    name: str
    params: int  # all parameters (after LoRA, with the adapters)
    param_bytes: int
    trainable: int
    trainable_bytes: int
    block_bytes: int  # the largest FSDP2 unit (a decoder layer or vision block)
    hidden: int
    kv: int  # key (= value) width: kv heads x head dim
    intermediate: int
    heads: int
    layers: int
    vocab: int
    act_bytes: int  # bytes of one activation value (the compute dtype)
    vision: dict | None = None  # the tower's hidden/kv/intermediate/heads/layers/merge, when it trains


def model_config(name: str) -> Any:
    """The transformers config of a published model or a local export (`config.json`)."""
    from transformers import AutoConfig

    if name in PUBLISHED:
        kwargs = dict(PUBLISHED[name])
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    from lit_caprl.errors import MissingPath
    from lit_caprl.models.paths import resolve

    path = Path(resolve(name))
    if not (path / "config.json").is_file():
        raise MissingPath(f"{name}: not a local export with config.json, nor one of {sorted(PUBLISHED)}")
    return AutoConfig.from_pretrained(path)


def build(name: str, dtype: str = "bfloat16", lora: dict | None = None, train_vision: bool = True) -> Model:
    """Count `name` as `fit` would build it (dtype, LoRA adapters) without allocating it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from lit_caprl.models.lora import LoRA, add_adapters
    from lit_caprl.models.sharding import block_classes

    config = model_config(name)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, dtype=getattr(torch, dtype))
        if lora is not None:
            model = add_adapters(model, LoRA(**lora))
    blocks = block_classes(model)
    block_bytes = max(_bytes(m.parameters()) for m in model.modules() if type(m).__name__ in blocks)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    param_bytes = _bytes(params)
    if lora is not None and lora.get("quantize") == "nf4":
        # bitsandbytes NF4: 4 bits and an fp32 absmax per 64 values (9/16 byte); the LM head stays
        head = model.get_output_embeddings()
        frozen = [
            m.weight
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head and not m.weight.requires_grad
        ]
        param_bytes -= _bytes(frozen) - sum(p.numel() for p in frozen) * 9 // 16
    text = config.get_text_config()
    heads_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    vision = None
    vcfg = getattr(config, "vision_config", None)
    if vcfg is not None and train_vision:
        vision = dict(
            hidden=vcfg.hidden_size,
            kv=vcfg.hidden_size,
            intermediate=vcfg.intermediate_size,
            heads=vcfg.num_heads if hasattr(vcfg, "num_heads") else vcfg.num_attention_heads,
            layers=getattr(vcfg, "depth", None) or vcfg.num_hidden_layers,
            merge=getattr(vcfg, "spatial_merge_size", 1) ** 2,
        )
    return Model(
        name=name,
        params=sum(p.numel() for p in params),
        param_bytes=param_bytes,
        trainable=sum(p.numel() for p in trainable),
        trainable_bytes=_bytes(trainable),
        block_bytes=block_bytes,
        hidden=text.hidden_size,
        kv=text.num_key_value_heads * heads_dim,
        intermediate=text.intermediate_size,
        heads=text.num_attention_heads,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        act_bytes=torch.finfo(getattr(torch, dtype)).bits // 8,
        vision=vision,
    )


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def activation_values(hidden: int, kv: int, intermediate: int, heads: int) -> int:
    """Values one decoder layer saves for backward per token under SDPA attention, as autograd
    counts them (tests/test_plan.py): the two norms' inputs and outputs, q, k and v, the
    attention output and o_proj's input (8h + 2kv), the MLP's gate, up, SiLU and product (4i),
    the attention's log-sum-exp per head and the norms' scales."""
    return 8 * hidden + 2 * kv + 4 * intermediate + heads + 2


def train_activations(m: Model, tokens: int, images: int, image_tokens: int, scored: int, ckpt: bool) -> float:
    """Saved activations of one micro-batch: `tokens` through the decoder, `images` through a
    trained vision tower, `scored` tokens' logits. With checkpointing each layer keeps only its
    input, and one layer at a time recomputes the rest."""
    per_layer = activation_values(m.hidden, m.kv, m.intermediate, m.heads) * tokens
    text = (m.layers * m.hidden * tokens + per_layer) if ckpt else m.layers * per_layer
    vis = 0
    if m.vision is not None and images:
        v = m.vision
        patches = images * image_tokens * v["merge"]
        v_layer = activation_values(v["hidden"], v["kv"], v["intermediate"], v["heads"]) * patches
        vis = (v["layers"] * v["hidden"] * patches + v_layer) if ckpt else v["layers"] * v_layer
    return (text + vis) * m.act_bytes + scored * m.vocab * LOGIT_BYTES


def kv_cache(m: Model, sequences: int, tokens: int) -> float:
    return 2 * m.layers * m.kv * sequences * tokens * m.act_bytes


@dataclass
class Plan:
    """Per-GPU gigabytes by phase and part; `peak` is the largest phase."""

    config: str
    stage: str
    ranks: int
    sharded: bool
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(sum(parts.values()) for parts in self.phases.values())

    def table(self, gpu_memory: float | None = None) -> str:
        parts = list(dict.fromkeys(k for p in self.phases.values() for k in p))
        head = f"| part (GB per GPU) | {' | '.join(self.phases)} |"
        rows = [head, "|---" * (len(self.phases) + 1) + "|"]
        for part in parts:
            rows.append(f"| {part} | " + " | ".join(_gb(ph.get(part)) for ph in self.phases.values()) + " |")
        rows.append("| **total** | " + " | ".join(f"**{_gb(sum(ph.values()))}**" for ph in self.phases.values()) + " |")
        how = f"FSDP2 over {self.ranks} ranks" if self.sharded else f"replicated on {self.ranks} ranks"
        lines = [f"{self.config}: {self.stage}, {how}", "", *rows, ""]
        if gpu_memory is not None:
            verdict = "fits" if self.peak <= gpu_memory * GB else "does NOT fit"
            lines.append(f"peak {self.peak / GB:.1f} GB: {verdict} a {gpu_memory:g} GB GPU")
        return "\n".join([*lines, *self.notes])


def _gb(x: float | None) -> str:
    return "" if x is None else f"{x / GB:.1f}"


def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def plan(cfg: dict, name: str = "config", image_tokens: int = 1024, caption_tokens: int | None = None) -> Plan:
    """The memory plan of a merged `fit` config (see `lit_caprl.preflight.read_config`)."""
    from lit_caprl.errors import ConfigError

    stage = str(_get(cfg, "model.class_path", "")).rsplit(".", 1)[-1]
    if stage not in ("SFTStage", "GRPOStage", "DPOStage"):
        raise ConfigError(f"model.class_path: plan knows SFTStage, GRPOStage and DPOStage, got {stage or None!r}")
    args = _get(cfg, "model.init_args", {})
    strategy = str(_get(cfg, "trainer.strategy.class_path", _get(cfg, "trainer.strategy", "")))
    devices = _get(cfg, "trainer.devices", 1)
    ranks = devices if isinstance(devices, int) else 1
    sharded = "ModelParallel" in strategy
    shards = ranks if sharded else 1
    lora = args.get("lora")
    dtype = args.get("dtype", "float32")
    ckpt = bool(args.get("gradient_checkpointing", False))
    train_vision = lora is None or not lora.get("freeze_vision", True)
    policy = build(args["model"], dtype, lora, train_vision)
    batch = int(_get(cfg, "data.init_args.batch_size", 1))
    caption = caption_tokens or int(args.get("max_new_tokens", 512))
    prompt = image_tokens + 32  # the image plus the chat template and instruction
    state_bytes = 1 if _get(args, "optim.name", "adamw") == "adamw8bit" else None
    resident = {
        "policy weights": policy.param_bytes / shards + (2 * policy.block_bytes if sharded else 0),
        "gradients": policy.trainable_bytes / shards,
        "AdamW states": 2 * (state_bytes * policy.trainable if state_bytes else policy.trainable_bytes) / shards,
    }
    p = Plan(name, stage, ranks, sharded)
    reference = lora is None and (stage == "DPOStage" or (stage == "GRPOStage" and args.get("beta", 0) > 0))
    if reference:
        ref_shards = shards if stage == "GRPOStage" and args.get("shard_reference") else 1
        resident["reference"] = policy.param_bytes / ref_shards
    if stage == "SFTStage":
        tokens = batch * (prompt + caption)
        p.phases["train"] = {
            **resident,
            "activations": train_activations(policy, tokens, batch, image_tokens, batch * caption, ckpt),
        }
    elif stage == "DPOStage":
        tokens = 2 * batch * (prompt + caption)  # chosen and rejected
        p.phases["train"] = {
            **resident,
            "activations": train_activations(policy, tokens, 2 * batch, image_tokens, 2 * batch * caption, ckpt),
        }
    else:
        g = int(args.get("num_generations", 8))
        micro = max(g, int(args.get("micro_batch_size", 64)) // g * g)  # whole groups
        micro = min(micro, g * batch)
        groups = micro // g
        reward = _get(args, "reward.init_args", {})
        reader = build(reward["reader"], reward.get("dtype", "float32"), train_vision=False)
        reader_batch = int(reward.get("batch_size", 256))
        rollout = {
            **resident,
            "reader weights": reader.param_bytes,
            "rollout KV cache": kv_cache(policy, g * batch, prompt + caption),
        }
        p.phases["rollout"] = rollout
        p.phases["reward"] = {
            **resident,
            "reader weights": reader.param_bytes,
            "reader KV cache": kv_cache(reader, reader_batch, caption + READER_PROMPT_TOKENS),
        }
        # Without checkpointing a group's prompt is encoded once and its cache shared by the
        # group's G captions; with it, each sequence carries its own prompt (GRPOStage).
        tokens = micro * caption + (micro if ckpt else groups) * prompt
        images = micro if ckpt else groups
        p.phases["train"] = {
            **resident,
            "reader weights": reader.param_bytes,
            "activations": train_activations(policy, tokens, images, image_tokens, micro * caption, ckpt),
        }
        p.notes.append(
            f"rollout: {g} x {batch} captions of {caption} tokens; reader batch {reader_batch}; "
            f"train micro-batch {micro} sequences"
        )
    p.notes.append(
        f"{policy.name}: {policy.params:,} parameters ({policy.trainable:,} trainable), {dtype}; "
        f"{image_tokens} image tokens, {caption} caption tokens; activation checkpointing {'on' if ckpt else 'off'}"
    )
    return p


# Settings `fixes` may change, in the order a user would reach for them: recomputation first
# (costs ~30% step time, changes nothing learnt), then smaller micro-batches (same updates,
# more passes: SFT/DPO halve the batch and double `accumulate_grad_batches`), then smaller
# batches of reader prompts; never the algorithm's own batch sizes.
FIX_KNOBS = (
    "model.init_args.gradient_checkpointing",
    "model.init_args.micro_batch_size",
    "data.init_args.batch_size",
    "model.init_args.reward.init_args.batch_size",
)


def fixes(cfg: dict, gpu_memory: float, **kw: Any) -> tuple[dict[str, Any], Plan]:
    """Settings that make the config fit `gpu_memory` GB: each knob in turn is switched on or
    halved while that lowers the peak, until it fits or nothing is left; and the plan they give."""
    import copy

    cfg = copy.deepcopy(cfg)
    changes: dict[str, Any] = {}
    current = plan(cfg, **kw)
    for key in FIX_KNOBS:
        if key.startswith("data.") and current.stage == "GRPOStage":
            continue  # GRPO's batch is prompts per rollout step: the algorithm's, not memory's
        while current.peak > gpu_memory * GB:
            value = _get(cfg, key)
            if isinstance(value, bool) or key.endswith("gradient_checkpointing"):
                new: Any = True
            elif isinstance(value, int) and value > 1:
                new = value // 2
            else:
                break
            change = {key: new}
            if key.startswith("data."):
                change["trainer.accumulate_grad_batches"] = 2 * _get(cfg, "trainer.accumulate_grad_batches", 1)
            trial = copy.deepcopy(cfg)
            for k, v in change.items():
                _set(trial, k, v)
            tried = plan(trial, **kw)
            if tried.peak >= current.peak:
                break
            cfg, current = trial, tried
            changes.update(change)
    return changes, current


def _set(cfg: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def main(argv: list[str]) -> int:
    import argparse

    from lit_caprl.preflight import read_config

    p = argparse.ArgumentParser(
        prog="lit-caprl plan",
        description="Per-GPU memory of a fit config at its real scale (nothing is downloaded).",
    )
    p.add_argument("-c", "--config", action="append", required=True, help="fit config(s), merged in order")
    p.add_argument("--gpu-memory", type=float, help="GB per GPU: say whether it fits, and what would make it")
    p.add_argument("--image-tokens", type=int, default=1024, help="image tokens per prompt (1024: ~900x900 px)")
    p.add_argument("--caption-tokens", type=int, help="tokens per caption (default: max_new_tokens, else 512)")
    a, overrides = p.parse_known_args(argv)
    cfg = read_config(a.config, [o[2:] for o in overrides if o.startswith("--") and "=" in o])
    kw = dict(name=" + ".join(a.config), image_tokens=a.image_tokens, caption_tokens=a.caption_tokens)
    result = plan(cfg, **kw)
    print(result.table(a.gpu_memory))
    if a.gpu_memory is not None and result.peak > a.gpu_memory * GB:
        changes, fixed = fixes(cfg, a.gpu_memory, **kw)
        verdict = "fits" if fixed.peak <= a.gpu_memory * GB else "still does NOT fit"
        flags = " ".join(f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())
        print(f"\nwith {flags or 'no change left to try'}: peak {fixed.peak / GB:.1f} GB, {verdict}")
    return 0
