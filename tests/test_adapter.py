"""The adapter's core promise: a sample's log-probs do not depend on its batch-mates."""

import random

import pytest
import torch

from lit_caprl.data import shapes
from lit_caprl.models.loading import load_model, resolve

TARGETS = ["top big red circle .", "red", "center small blue cross . at left is"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_logprobs_in_padded_batch_equal_alone(tiny_models, family):
    torch.manual_seed(0)
    adapter = load_model(tiny_models[family])
    rng = random.Random(0)
    images = [shapes.render(shapes.sample_scene(rng)) for _ in TARGETS]
    prompts = [  # different prompt lengths force left padding
        adapter.chat("describe this image in detail .", True),
        adapter.chat("describe this image .", True, prefill="top"),
        adapter.chat("describe the image in detail .", True),
    ]
    batch = adapter.encode_prompts(prompts, images)
    assert (batch.attention_mask == 0).any(), "the test needs padding"
    together = adapter.completion_logprobs(batch, adapter.encode_completions(TARGETS), temperature=0.7)
    for i in range(len(TARGETS)):
        alone_comp = adapter.encode_completions([TARGETS[i]])
        alone = adapter.completion_logprobs(
            adapter.encode_prompts([prompts[i]], [images[i]]), alone_comp, temperature=0.7
        )
        n = int(alone_comp.mask.sum())
        torch.testing.assert_close(together[i, :n], alone[0, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_group_shared_prompts_give_the_same_logprobs_and_gradients(tiny_models, family):
    """Encoding each prompt once for its G completions (a KV cache repeated G times) is an
    optimisation only: log-probs and gradients equal the plain forward over repeated prompts."""
    torch.manual_seed(0)
    adapter = load_model(tiny_models[family])
    adapter.model.train()
    rng = random.Random(0)
    images = [shapes.render(shapes.sample_scene(rng)) for _ in range(2)]
    prompts = [adapter.chat("describe this image in detail .", True), adapter.chat("describe this image .", True)]
    batch = adapter.encode_prompts(prompts, images)
    batch = batch.select(torch.arange(2).repeat_interleave(3))  # 2 groups of G=3, padded prompts
    completions = adapter.encode_completions([*TARGETS, *reversed(TARGETS)])
    mask = completions.mask.bool()
    results = []
    for group in (1, 3):
        adapter.model.zero_grad()
        logp = adapter.completion_logprobs(batch, completions, temperature=0.7, group=group)
        logp[mask].sum().backward()
        results.append(
            (
                logp[mask].detach(),
                {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None},
            )
        )
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    assert shared_grads.keys() == plain_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], g, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="whole groups"):
        adapter.completion_logprobs(batch, completions, group=4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_group_shared_prefill_generates_the_same_captions(tiny_models, family):
    """Generation that encodes each prompt once per group draws exactly what plain generation
    draws, greedy and sampled with the same seed."""
    adapter = load_model(tiny_models[family])
    rng = random.Random(2)
    images = [shapes.render(shapes.sample_scene(rng)) for _ in range(2)]
    prompts = [adapter.chat("describe this image in detail .", True), adapter.chat("describe this image .", True)]
    batch = adapter.encode_prompts(prompts, images).select(torch.arange(2).repeat_interleave(4))
    for sample in (False, True):
        torch.manual_seed(1)
        plain = adapter.generate(batch, 12, do_sample=sample)
        torch.manual_seed(1)
        shared = adapter.generate(batch, 12, do_sample=sample, group=4)
        assert torch.equal(shared.ids, plain.ids) and torch.equal(shared.mask, plain.mask)


def test_select_slices_flattened_qwen_patches(tiny_models):
    adapter = load_model(tiny_models["qwen2_5_vl"])
    rng = random.Random(1)
    images = [shapes.render(shapes.sample_scene(rng)) for _ in range(3)]
    text = adapter.chat("describe this image in detail .", True)
    batch = adapter.encode_prompts([text] * 3, images)
    picked = batch.select(torch.tensor([2, 2, 0]))
    single = adapter.encode_prompts([text], [images[2]])
    per_image = single.pixel_values.shape[0]
    torch.testing.assert_close(picked.pixel_values[:per_image], single.pixel_values)
    torch.testing.assert_close(picked.pixel_values[per_image : 2 * per_image], single.pixel_values)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_generate_then_forward_on_other_batch_size(tiny_models, family):
    """Generation caches Qwen's rope_deltas for its batch; a training forward of another size must still work."""
    torch.manual_seed(0)
    adapter = load_model(tiny_models[family])
    rng = random.Random(2)
    images = [shapes.render(shapes.sample_scene(rng)) for _ in range(3)]
    text = adapter.chat("describe this image in detail .", True)
    big = adapter.encode_prompts([text] * 3, images)
    comps = adapter.generate(big, max_new_tokens=6)
    assert comps.ids.shape[0] == 3 and not comps.ids.requires_grad
    eos_rows = comps.ids == adapter.eos_id
    assert ((comps.mask.sum(-1) == 6) | eos_rows.any(-1)).all()  # mask runs to the first EOS or the budget
    small = big.select(torch.tensor([1]))
    lp = adapter.completion_logprobs(small, adapter.encode_completions(["top big red circle ."]))
    assert torch.isfinite(lp).all()


def test_missing_model_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve("runs/models/not-built-yet")
    assert resolve("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "qwen2"])
def test_loaded_tokenizer_keeps_every_word(tiny_models, family):
    """Each ShapesWorld word is one token after a save/load round trip (no word dropped or unknown)."""
    tok = load_model(tiny_models[family]).tokenizer
    text = "top-left big red circle . what color is the object at center ? the answer is E"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.split()) and tok.unk_token_id not in ids


def test_attention_is_sdpa_unless_asked(tiny_models):
    """Every recipe was tuned under PyTorch's fused attention, and its rounding decides whether a
    tiny model learns its lookups (with eager, captioner SFT once named colours and shapes at
    chance): a changed default would re-roll them. A caller's explicit choice still wins."""
    for family in ("qwen2", "qwen2_5_vl", "llava"):
        assert load_model(tiny_models[family]).model.config._attn_implementation == "sdpa"
    assert load_model(tiny_models["qwen2"], attn_implementation="eager").model.config._attn_implementation == "eager"


def test_patch_embedding_as_matmul_matches_the_conv_and_keeps_checkpoints(tiny_models, tmp_path):
    from transformers import AutoModelForImageTextToText

    from lit_caprl.models.loading import ConvAsLinear

    adapter = load_model(tiny_models["qwen2_5_vl"])
    embed = adapter.base.model.visual.patch_embed
    assert isinstance(embed.proj, ConvAsLinear)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_5_vl"]).model.visual.patch_embed
    assert isinstance(plain.proj, torch.nn.Conv3d)
    pixels = torch.randn(18, 3 * 2 * shapes.CELL * shapes.CELL)
    torch.testing.assert_close(embed(pixels), plain(pixels), atol=1e-5, rtol=1e-5)
    adapter.base.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).model.visual.patch_embed
    torch.testing.assert_close(reloaded.proj.weight, plain.proj.weight, atol=0, rtol=0)
