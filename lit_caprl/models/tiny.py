"""Tiny random-init models for CPU tests and demos, saved like any Hub checkpoint.

Nothing downstream knows these are tiny: they are written with `save_pretrained` (model,
tokenizer, processor, chat template) and loaded back through `from_pretrained`, the same
route a user takes with `Qwen/Qwen2.5-VL-3B-Instruct`.

The tokenizer is word level: every ShapesWorld word, prompt word and option letter is
one token, which keeps sequences short and lets tiny models learn in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lit_caprl.data import prompts, shapes
from lit_caprl.data.schema import LETTERS

Family = Literal["qwen2_5_vl", "llava", "qwen2", "clip"]
Size = Literal["tiny", "mini", "small"]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "[UNK]",
]

# Qwen-style chat template; content may be a string or a list of {"type": "image"|"text"} parts.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IMAGE_MARKUP = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image> ",
    "qwen2": "",
    "clip": "",
}

# Decoder weights start at std 0.1 instead of Qwen's 0.02: at 0.02 the nine position words stay
# too alike to match or copy, so the reader cannot look positions up and the captioner cannot tie
# the position word it wrote to that cell's image token (measured: RESULTS.md).
_TEXT = {  # decoder sizes; "small" matches the model of the TRL GRPO anchor
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
    ),
    # "mini" is the reader. Picking one object's attribute out of a caption that names three or
    # four comes late, as a jump, and with two layers whether it came within 7,000 steps depended
    # on the seed (gold-caption utility 0.832 / 0.919 / 0.914 for seeds 0 / 1 / 2; with weight
    # decay 0.1, 0.870 / 0.923 / 0.916); with three, at 1.4x the time per step, it comes on every
    # seed (RESULTS.md).
    "mini": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        initializer_range=0.1,
    ),
    "small": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
    ),
}
_VISION = {
    "tiny": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4),
    "mini": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4),
    "small": dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4),
}


def vocabulary() -> list[str]:
    """Special tokens, then every word of ShapesWorld, the prompts and the option letters."""
    words = set(shapes.vocabulary())
    probe = [
        prompts.reader_question("caption", "question", ["option"]),
        prompts.ANSWER_PREFIX,
        prompts.DEFAULT_CAPTION_PROMPT,
        prompts.visual_question("question", ["option"]),
    ]
    words |= set(" ".join(probe).split())
    words |= set(LETTERS[:8]) | {"user", "assistant", "system"}
    return SPECIAL_TOKENS + sorted(words)


def build_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="<|endoftext|>",  # pad != eos, so masking pad never masks the real end of a caption
        eos_token="<|im_end|>",
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:-1],
        padding_side="left",
    )
    tokenizer.chat_template = _CHAT_TEMPLATE.replace("IMAGE", _IMAGE_MARKUP[family])
    return tokenizer


def _text_kwargs(tokenizer: PreTrainedTokenizerFast, size: Size) -> dict:
    return dict(
        _TEXT[size],
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _generation_config(tokenizer: PreTrainedTokenizerFast):
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)


def _qwen2_5_vl(tokenizer: PreTrainedTokenizerFast, size: Size):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    head_dim = _TEXT[size]["hidden_size"] // _TEXT[size]["num_attention_heads"]
    half = head_dim // 2  # mrope sections (temporal, height, width) split the rotary half-dim
    config = Qwen2_5_VLConfig(
        text_config=dict(
            _text_kwargs(tokenizer, size),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
            },
        ),
        vision_config=dict(
            _VISION[size],
            out_hidden_size=_TEXT[size]["hidden_size"],
            patch_size=shapes.CELL,
            spatial_merge_size=1,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[_VISION[size]["depth"] - 1],
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    # One 28x28 patch, and so one image token, per ShapesWorld grid cell: a single patch sees a
    # whole object, so its shape is a linear template of the patch (with 14-pixel patches merged
    # 2x2, a tiny tower needed far longer to tell shapes apart). Images keep their size.
    pixels = shapes.IMAGE_SIZE**2
    image_processor = Qwen2VLImageProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=shapes.CELL, merge_size=1, temporal_patch_size=2
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _llava(tokenizer: PreTrainedTokenizerFast, size: Size):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    patch = shapes.CELL  # one patch per grid cell
    vision = CLIPVisionConfig(
        image_size=shapes.IMAGE_SIZE,
        patch_size=patch,
        hidden_size=_VISION[size]["hidden_size"],
        intermediate_size=_VISION[size]["intermediate_size"],
        num_hidden_layers=_VISION[size]["depth"],
        num_attention_heads=_VISION[size]["num_heads"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_text_kwargs(tokenizer, size)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,  # the default (-2) wastes a layer of a tiny tower
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    side = {"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE}
    image_processor = CLIPImageProcessor(size={"shortest_edge": shapes.IMAGE_SIZE}, crop_size=side)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
        image_token="<image>",
    )
    return LlavaForConditionalGeneration(config), processor


def _qwen2(tokenizer: PreTrainedTokenizerFast, size: Size):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_text_kwargs(tokenizer, size))), tokenizer


def _clip(tokenizer: PreTrainedTokenizerFast, size: Size):
    """A CLIP dual encoder for the image-caption similarity reward (`ClipSimilarity`). Its text
    tower reads a caption's embedding at the first EOS, so the tokenizer appends one, and pads
    on the right: with absolute positions, left padding would shift a caption's embedding with
    the longest caption of its batch."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    tokenizer.padding_side = "right"
    text, vision = _TEXT[size], _VISION[size]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            image_size=shapes.IMAGE_SIZE,
            patch_size=shapes.CELL,  # one patch per grid cell, as the captioner's
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["depth"],
            num_attention_heads=vision["num_heads"],
        ),
        projection_dim=text["hidden_size"],
    )
    side = {"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE}
    image_processor = CLIPImageProcessor(size={"shortest_edge": shapes.IMAGE_SIZE}, crop_size=side)
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_tiny(family: Family, size: Size, out: str | Path, seed: int = 0) -> Path:
    """Build a random-init model of `family` and save it (model + processor/tokenizer) to `out`."""
    builders = {"qwen2_5_vl": _qwen2_5_vl, "llava": _llava, "qwen2": _qwen2, "clip": _clip}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(builders)}")
    if size not in _TEXT:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(_TEXT)}")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(family)
    model, processor = builders[family](tokenizer, size)
    if model.can_generate():
        model.generation_config = _generation_config(tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
