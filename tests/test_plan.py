"""`lit-caprl plan`: counts checked against the real models and optimizer (tiny) and against
hand-computed figures (3B), activations against autograd's own saved tensors."""

from __future__ import annotations

import pytest
import torch

from lit_caprl.plan import GB, activation_values, build, fixes, plan
from lit_caprl.preflight import read_config

GRPO, SFT, DPO = (f"experiments/caprl/{s}.yaml" for s in ("grpo", "sft", "dpo"))


def _tiny_config(model: str, **model_args) -> dict:
    return {
        "model": {"class_path": "lit_caprl.stages.SFTStage", "init_args": {"model": model, **model_args}},
        "data": {"init_args": {"batch_size": 2}},
        "trainer": {"devices": 1},
    }


def test_tiny_counts_equal_the_loaded_model(tiny_models):
    """Parameters, bytes and LoRA's trainable count are those `fit` loads (from_pretrained + peft)."""
    from lit_caprl.models.loading import load_policy
    from lit_caprl.models.lora import LoRA

    path = tiny_models["qwen2_5_vl"]
    real = load_policy(path, dtype="bfloat16").model
    counted = build(path, "bfloat16")
    assert counted.params == sum(p.numel() for p in real.parameters())
    assert counted.param_bytes == sum(p.numel() * p.element_size() for p in real.parameters())
    lora = load_policy(path, lora=LoRA(r=4, alpha=8)).model
    counted = build(path, "float32", {"r": 4, "alpha": 8})
    assert counted.trainable == sum(p.numel() for p in lora.parameters() if p.requires_grad) > 0
    assert counted.params == sum(p.numel() for p in lora.parameters())


def test_adamw_states_equal_the_real_optimizer(tiny_models):
    """The plan's optimizer row (one rank) is the bytes AdamW holds after a step."""
    from lit_caprl.models.loading import load_policy
    from lit_caprl.stages.optim import Optim, adamw_schedule

    path = tiny_models["qwen2_5_vl"]
    model = load_policy(path).model
    optimizer = adamw_schedule(model.named_parameters(), Optim(), 10)["optimizer"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    held = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    rows = plan(_tiny_config(path)).phases["train"]
    assert rows["AdamW states"] == held
    assert rows["gradients"] == sum(p.numel() * p.element_size() for p in model.parameters())


def _qwen25_3b_by_hand() -> int:
    h, i, layers, vocab, kv = 2048, 11008, 36, 151936, 2 * 128
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q and k, v with biases; o without
    layer = attention + 3 * h * i + 2 * h  # gate, up, down; two RMSNorms
    return vocab * h + layers * layer + h  # tied embeddings; final norm


def test_3b_counts_equal_hand_computed_figures():
    assert build("Qwen/Qwen2.5-3B-Instruct").params == _qwen25_3b_by_hand() == 3_085_938_688
    h, i, depth = 1280, 3420, 32
    block = (h * 3 * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h) + 2 * h
    merger = h + (4 * h * 4 * h + 4 * h) + (4 * h * 2048 + 2048)  # ln_q, then two linears over 2x2 patches
    vision = 3 * 2 * 14 * 14 * h + depth * block + merger
    assert build("Qwen/Qwen2.5-VL-3B-Instruct").params == _qwen25_3b_by_hand() + vision == 3_754_622_976


def test_grpo_rows_by_hand():
    """experiments/caprl/grpo.yaml on 8 GPUs: bf16 FSDP2 shards, a replicated bf16 reader, and
    the rollout KV cache of 8 x 16 sequences of (1024 image + 32 + 1024 caption) tokens."""
    rows = plan(read_config([GRPO], []), image_tokens=1024).phases
    policy, reader = 3_754_622_976, 3_085_938_688
    assert rows["train"]["gradients"] == 2 * policy / 8
    assert rows["train"]["AdamW states"] == 4 * policy / 8
    assert rows["reward"]["reader weights"] == 2 * reader
    attention = 2 * 2048 * 2048 + 2048 + 2 * (2048 * 256 + 256)  # q, o; q's bias; k and v with biases
    layer = 2 * (attention + 3 * 2048 * 11008 + 2 * 2048)  # bf16 bytes of the largest FSDP2 unit
    assert rows["rollout"]["policy weights"] == 2 * policy / 8 + 2 * layer
    assert rows["rollout"]["rollout KV cache"] == 2 * 36 * 256 * 128 * (1024 + 32 + 1024) * 2
    assert rows["reward"]["reader KV cache"] == 2 * 36 * 256 * 128 * (1024 + 300) * 2


@pytest.mark.parametrize("dims", [(64, 128, 4, 2), (96, 256, 4, 4)])
def test_activation_values_match_autograd(dims):
    """Per token and decoder layer, what autograd saves for backward (SDPA, float32), measured as
    the difference between a 3-layer and a 1-layer model, within 2%."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    h, i, heads, kv_heads = dims
    tokens = 2 * 128

    def saved_bytes(layers: int) -> int:
        torch.manual_seed(0)
        config = Qwen2Config(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=32,
            attn_implementation="sdpa",
        )
        model = Qwen2ForCausalLM(config).train()
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 32, (2, tokens // 2)))
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in weights)

    measured = (saved_bytes(3) - saved_bytes(1)) / 2 / tokens / 4
    assert measured == pytest.approx(activation_values(h, kv_heads * h // heads, i, heads), rel=0.02)


def test_checkpointing_and_lora_shrink_the_plan():
    cfg = read_config([SFT], [])
    on = plan(cfg).phases["train"]
    off = plan(read_config([SFT], ["model.init_args.gradient_checkpointing=false"])).phases["train"]
    assert on["activations"] < off["activations"] / 4
    assert on["policy weights"] == off["policy weights"]
    lora = plan(read_config([DPO], [])).phases["train"]
    assert lora["gradients"] < on["gradients"] / 5  # adapters only
    assert "reference" not in lora  # the policy with adapters disabled is the reference


def test_fixes_make_grpo_fit_40gb():
    cfg = read_config([GRPO], [])
    assert plan(cfg).peak > 40 * GB
    changes, fixed = fixes(cfg, 40)
    assert changes == {"model.init_args.micro_batch_size": 8}
    assert fixed.peak <= 40 * GB
    assert fixes(cfg, 80)[0] == {}


def test_cli_prints_the_table_and_the_fix(capsys):
    from lit_caprl.cli import main

    assert main(["plan", "-c", GRPO, "--gpu-memory", "40"]) == 0
    out = capsys.readouterr().out
    assert "| activations |" in out and "does NOT fit a 40 GB GPU" in out
    assert "--model.init_args.micro_batch_size=8: peak" in out and out.rstrip().endswith("fits")
    assert main(["plan", "-c", GRPO, "--gpu-memory", "80", "--model.init_args.micro_batch_size=8"]) == 0
    assert "fits a 80 GB GPU" in capsys.readouterr().out
