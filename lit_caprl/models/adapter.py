"""The VLM adapter: the one place that knows model-family quirks.

Every stage sees sequences the same way: a left-padded prompt batch (`PromptBatch`)
followed by right-padded completion tokens ending in EOS. SFT, GRPO, DPO and the reader
reward all reduce to "log-probs of these completion tokens after these prompts", which
`completion_logprobs` computes for any family:

- Qwen2-VL family: `pixel_values` are patches flattened across the batch, so per-sample
  slicing goes through `image_grid_thw`; positions are 3-D (mrope) and the model caches
  `rope_deltas` during `generate`, which must be reset before a training forward.
- LLaVA and text-only decoders: positions come from the attention mask, so left padding
  does not shift them.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lit_caprl.models.batches import Completions, PromptBatch
from lit_caprl.models.sharding import distributed, is_sharded, root_unsharded
from lit_caprl.models.text_scorer import TextCache

# Parameter-name fragments of vision towers and their projectors into the LM (Qwen2.5-VL:
# `visual`; LLaVA: `vision_tower`, `multi_modal_projector`).
VISION_MODULES = r".*(visual|vision_tower|multi_modal_projector).*"


def is_vision_parameter(name: str) -> bool:
    """Does parameter `name` belong to the vision tower or its projector (any family, peft-wrapped or not)?"""
    return re.fullmatch(VISION_MODULES, name) is not None


class VLMAdapter:
    """Wraps a Hugging Face model and its processor (or tokenizer, for text-only readers)."""

    def __init__(self, model: torch.nn.Module, processor) -> None:
        self.model = model  # possibly wrapped by peft or FSDP2; `base` is the HF model itself
        self.base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        self.mrope = model.config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    # ---- prompts -------------------------------------------------------------------------
    def chat(self, text: str, with_image: bool, prefill: str = "") -> str:
        """One user turn rendered with the model's chat template, ready for the assistant to answer."""
        content = [{"type": "image"}, {"type": "text", "text": text}] if with_image else text
        rendered = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return rendered + prefill

    def encode_prompts(self, texts: list[str], images: list[Image.Image] | None = None) -> PromptBatch:
        """Tokenize already-rendered prompts (see `chat`), left-padded, with their images."""
        if images is None:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            return PromptBatch(enc["input_ids"], enc["attention_mask"])
        enc = self.processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
        return PromptBatch(
            enc["input_ids"],
            enc["attention_mask"],
            enc.get("pixel_values"),
            enc.get("image_grid_thw"),
            enc.get("mm_token_type_ids"),
        )

    def encode_completions(self, texts: list[str]) -> Completions:
        """Target texts as right-padded token ids, each ending in EOS (so the model learns to stop).
        Each distinct text is tokenized once: MCQ options repeat thousands of times per reward call."""
        unique = list(dict.fromkeys(texts))
        rows = [torch.tensor(r + [self.eos_id]) for r in self.tokenizer(unique, add_special_tokens=False)["input_ids"]]
        ids = pad_sequence(rows, batch_first=True, padding_value=self.pad_id)
        mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        where = {text: i for i, text in enumerate(unique)}
        index = torch.tensor([where[text] for text in texts])
        return Completions(ids[index], mask[index], torch.zeros(len(texts), dtype=torch.bool))

    def decode(self, completions: Completions) -> list[str]:
        return [
            self.tokenizer.decode(row[: int(n)], skip_special_tokens=True).strip()
            for row, n in zip(completions.ids, completions.lengths, strict=True)
        ]

    # ---- forward passes ------------------------------------------------------------------
    def _forward_kwargs(self, batch: PromptBatch, extra: Tensor, extra_mask: Tensor) -> dict:
        input_ids = torch.cat([batch.input_ids, extra], dim=1)
        mask = torch.cat([batch.attention_mask, extra_mask.to(batch.attention_mask.dtype)], dim=1)
        kwargs = dict(input_ids=input_ids, attention_mask=mask, use_cache=False)
        if batch.pixel_values is not None:
            kwargs["pixel_values"] = batch.pixel_values
        if self.mrope:
            self.base.model.rope_deltas = None  # stale after generate() on a batch of another size
            kwargs["image_grid_thw"] = batch.image_grid_thw
            if batch.mm_token_type_ids is not None:
                kwargs["mm_token_type_ids"] = torch.cat([batch.mm_token_type_ids, torch.zeros_like(extra)], dim=1)
        else:
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs

    def completion_logprobs(
        self, batch: PromptBatch, completions: Completions, temperature: float = 1.0, group: int = 1
    ) -> Tensor:
        """Per-token log p(completion token | prompt, earlier tokens) at `temperature`, shape [B, L].

        Padding positions hold garbage; multiply by `completions.mask`. Only the completion's
        logits are computed (`logits_to_keep`), which skips the LM head over long image prompts.

        `group=G` says rows come in runs of G with the same prompt (GRPO's groups): each prompt
        and its image are then encoded once and their keys/values shared by the G completions,
        instead of G times. Same numbers, and gradients still reach the prompt's positions.
        """
        length = completions.ids.shape[1]
        if group > 1:
            logits = self._shared_prompt_logits(batch, completions, group)
        else:
            kwargs = self._forward_kwargs(batch, completions.ids, completions.mask)
            logits = self.model(**kwargs, logits_to_keep=length + 1).logits[:, :-1].float()
        if temperature != 1.0:
            logits = logits / temperature
        return torch.gather(F.log_softmax(logits, dim=-1), 2, completions.ids.unsqueeze(-1)).squeeze(-1)

    def _distinct_prompts(self, batch: PromptBatch, group: int) -> tuple[PromptBatch, dict]:
        """The first row of each run of `group` rows, and its forward kwargs (prompt only)."""
        n = len(batch)
        if n % group:
            raise ValueError(f"{n} rows do not form whole groups of {group}")
        unique = batch.select(torch.arange(0, n, group, device=batch.input_ids.device))
        return unique, self._forward_kwargs(unique, unique.input_ids[:, :0], unique.attention_mask[:, :0])

    def _shared_prompt_logits(self, batch: PromptBatch, completions: Completions, group: int) -> Tensor:
        """Logits predicting each completion token: one pass over the distinct prompts fills a KV
        cache, repeated G times along the batch, then one pass over the completions reads it."""
        length = completions.ids.shape[1]
        unique, prompt = self._distinct_prompts(batch, group)
        if self.mrope:  # text after the prompt continues from its last (3-D) position, on all axes
            positions, _ = self.base.model.get_rope_index(
                prompt["input_ids"],
                mm_token_type_ids=prompt.get("mm_token_type_ids"),
                image_grid_thw=prompt["image_grid_thw"],
                attention_mask=prompt["attention_mask"],
            )
            prompt["position_ids"] = positions
            after = positions[..., -1:].repeat_interleave(group, dim=-2)
            completion_positions = after + 1 + torch.arange(length, device=after.device)
        else:
            full_mask = torch.cat([batch.attention_mask, completions.mask.to(batch.attention_mask.dtype)], dim=1)
            completion_positions = (full_mask.long().cumsum(-1) - 1)[:, -length:]
        prompt["use_cache"] = True
        out = self.model(**prompt, logits_to_keep=1)
        cache = out.cache
        cache.batch_repeat_interleave(group)
        width = unique.input_ids.shape[1]
        mask = torch.cat([unique.attention_mask.repeat_interleave(group, dim=0), completions.mask], dim=1)
        rest = self.model(
            input_ids=completions.ids,
            attention_mask=mask,
            position_ids=completion_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=length,
            cache_position=torch.arange(width, width + length, device=mask.device),
        ).logits
        first = out.logits[:, -1:].repeat_interleave(group, dim=0)
        return torch.cat([first, rest[:, :-1]], dim=1).float()

    def next_token_logits(self, batch: PromptBatch) -> Tensor:
        """Logits of the token after each prompt, shape [B, V] (the reader's answer position)."""
        empty = batch.input_ids.new_zeros((len(batch), 0))
        kwargs = self._forward_kwargs(batch, empty, empty)
        return self.model(**kwargs, logits_to_keep=1).logits[:, -1].float()

    @torch.no_grad()
    def generate(
        self,
        batch: PromptBatch,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        group: int = 1,
        past: TextCache | None = None,
    ) -> Completions:
        """Sample completions under `no_grad` (not `inference_mode`: their tensors later enter
        a training forward). Tokens that would break a forward pass (image, pad) are suppressed.

        An FSDP2-sharded model decodes in lock-step (`synced_gpus`): a rank whose captions all
        ended keeps joining the other ranks' forward passes (and their all-gathers) until every
        rank is done, instead of leaving them hanging.

        `group=G` (rows in runs of G with the same prompt): each prompt and image is encoded once
        and its KV cache repeated G times; decoding then continues from that cache.

        `past` (text only): the keys/values of each row's first columns, already computed (see
        `mcq.sample_answers`); generation encodes only the rest of the prompt."""
        if self.mrope:
            self.base.model.rope_deltas = None
        kwargs = self._forward_kwargs(batch, batch.input_ids[:, :0], batch.attention_mask[:, :0])
        kwargs.pop("use_cache")
        kwargs.pop("position_ids", None)
        sampling = dict(temperature=temperature, top_p=top_p) if do_sample else {}
        with root_unsharded(self.model):
            if group > 1:
                kwargs = self._prefill_groups(batch, kwargs, group)
            if past is not None:
                kwargs["cache"] = past.kv
            out = self.model.generate(
                **kwargs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                **sampling,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                suppress_tokens=self._suppressed(),
                synced_gpus=is_sharded(self.model) and distributed(),
            )
        return self.completions_from_ids(out[:, batch.input_ids.shape[1] :])

    def _prefill_groups(self, batch: PromptBatch, kwargs: dict, group: int) -> dict:
        """Encode each distinct prompt (all but its last token) once, repeat the cache G times,
        and return `generate` kwargs that continue from it: the images are already in the cache."""
        _, prefill = self._distinct_prompts(batch, group)
        # Positions as `generate` counts them (from the attention mask), so a left-padded prompt's
        # cache matches the one plain generation builds (mrope models compute theirs from the mask).
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids"):
            if key in prefill:  # left padding: the last column is always a real (text) token
                prefill[key] = prefill[key][:, :-1]
        prefill["use_cache"] = True
        cache = self.model(**prefill, logits_to_keep=1).cache
        cache.batch_repeat_interleave(group)
        if self.mrope:
            self.base.model.rope_deltas = self.base.model.rope_deltas.repeat_interleave(group, dim=0)
        return {k: v for k, v in kwargs.items() if k != "pixel_values"} | {"cache": cache}

    def _suppressed(self) -> list[int]:
        ids = {self.pad_id, self.tokenizer.bos_token_id, self.tokenizer.unk_token_id}
        for name in (
            "image_token_id",
            "video_token_id",
            "image_token_index",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            ids.add(getattr(self.model.config, name, None))
        ids.discard(self.eos_id)
        ids.discard(None)
        return sorted(ids)

    def completions_from_ids(self, ids: Tensor) -> Completions:
        """Sampled token ids as `Completions`: the mask covers each row up to and including its
        first EOS (the rest becomes padding); rows with no EOS are truncated."""
        is_eos = ids == self.eos_id
        has_eos = is_eos.any(-1)
        first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long))
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = (positions[None] <= first[:, None]).long()
        ids = ids.masked_fill(mask == 0, self.pad_id)
        return Completions(ids, mask, ~has_eos)
