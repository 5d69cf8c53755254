"""Image-caption cosine similarity from a Hugging Face `CLIPModel` (frozen)."""

from __future__ import annotations

import torch
from transformers import AutoImageProcessor, CLIPModel

from lit_caprl.data.schema import Record
from lit_caprl.models.loading import load_tokenizer, resolve
from lit_caprl.rewards.base import FrozenReward, RewardOutput, freeze


class ClipSimilarity(FrozenReward):
    """cos(image embedding, caption embedding) in [-1, 1]: a reference-free grounding reward.

    Args:
        model: a `CLIPModel` export or Hub id (e.g. `openai/clip-vit-base-patch32`).
        batch_size: image-caption pairs per forward pass.
    """

    name = "clip"

    def __init__(self, model: str, batch_size: int = 64, dtype: str = "float32") -> None:
        super().__init__()
        source = resolve(model)
        self.model = freeze(CLIPModel.from_pretrained(source, dtype=getattr(torch, dtype)))
        self.tokenizer = load_tokenizer(source)
        # CLIP's text tower has absolute positions and reads the first EOS: padded on the left,
        # a caption's embedding would shift with the longest caption of its batch.
        self.tokenizer.padding_side = "right"
        self.image_processor = AutoImageProcessor.from_pretrained(source)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, captions: list[str], records: list[Record], step: int = 0) -> RewardOutput:
        sims = []
        for s in range(0, len(captions), self.batch_size):
            texts = captions[s : s + self.batch_size]
            images = [r.load_image() for r in records[s : s + self.batch_size]]
            text = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            device = self.model.device
            t = self.model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device))
            v = self.model.get_image_features(pixel_values=pixels.to(device, self.model.dtype))
            t, v = t.pooler_output, v.pooler_output  # projected embeddings
            sims.append(torch.nn.functional.cosine_similarity(t.float(), v.float(), dim=-1).cpu())
        rewards = torch.cat(sims)
        return RewardOutput(rewards, {self.name: rewards})
