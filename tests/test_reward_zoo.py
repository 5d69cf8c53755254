"""The reward zoo: each term's direction (a better caption scores higher) and the composite's arithmetic."""

import math

import pytest
import torch

from lit_caprl.data.schema import MCQ, Record
from lit_caprl.rewards import CompositeReward, LengthPenalty, ReferenceMetric
from lit_caprl.rewards.composite import combine
from lit_caprl.rewards.length import length_penalty

GOLD = "top-left big red circle . center small blue square ."
WRONG_COLOR = "top-left big green circle . center small blue square ."


def _record(captions=(GOLD,)) -> Record:
    return Record("r", None, (MCQ("what color ?", ("red", "green"), "A"),), tuple(captions))


def test_length_penalty_hand_values():
    got = length_penalty(torch.tensor([0, 10, 12, 15, 20, 30]), l1=10, l2=20)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 0.8, 0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="l1 < l2"):
        LengthPenalty(l1=20, l2=10)


def test_length_penalty_prefers_the_caption_within_budget():
    padded = GOLD + " and" * 40
    out = LengthPenalty(l1=16, l2=32)([GOLD, padded], [_record()] * 2)
    assert out.rewards[0] == 1.0 and out.rewards[1] == 0.0


@pytest.mark.parametrize("metric", ["bleu", "rouge_l", "chrf"])
def test_reference_metric_prefers_the_right_caption(metric):
    out = ReferenceMetric(metric)([GOLD, WRONG_COLOR, "bottom cross ."], [_record()] * 3)
    assert out.rewards[0] > out.rewards[1] > out.rewards[2]
    assert out.rewards[0] == pytest.approx(1.0)


def test_reference_metric_without_references_is_nan_not_zero():
    out = ReferenceMetric("bleu")([GOLD], [_record(captions=())])
    assert math.isnan(out.rewards[0])


def test_combine_hand_computed_with_exclusion():
    values = torch.tensor([[0.5, float("nan"), 1.0, float("nan")], [1.0, 0.2, float("inf"), float("nan")]])
    weights = torch.tensor([2.0, 1.0])
    rewards, excluded = combine(values, weights)
    # sample 0: 2*0.5 + 1*1.0 = 2.0; sample 1: only term 2 -> 1*0.2 * (3/1) = 0.6;
    # sample 2: only term 1 -> 2*1.0 * (3/2) = 3.0; sample 3: nothing finite -> mean of the others.
    torch.testing.assert_close(rewards, torch.tensor([2.0, 0.6, 3.0, (2.0 + 0.6 + 3.0) / 3]))
    assert excluded.sum(1).tolist() == [2, 2]


def test_composite_logs_each_term_and_counts_exclusions():
    reward = CompositeReward({"ref": ReferenceMetric("rouge_l"), "len": LengthPenalty(4, 10)}, {"ref": 2.0})
    out = reward([GOLD, GOLD], [_record(), _record(captions=())])
    assert set(out.terms) == {"ref", "len", "excluded_ref", "excluded_len"}
    assert out.terms["excluded_ref"].tolist() == [0.0, 1.0]
    # sample 0: 2 * 1.0 (rouge) + 1 * length_penalty(10 words; 4..10) = 2 + 0 = 2
    # sample 1: rouge excluded -> 1 * 0 * (3/1) = 0
    torch.testing.assert_close(out.rewards, torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="unknown terms"):
        CompositeReward({"len": LengthPenalty()}, {"qa": 1.0})


def _tiny_classifier(out, num_labels: int, labels: tuple[str, ...] = ()):
    """A 1-layer Qwen2 sequence classifier with the ShapesWorld word tokenizer, quickly trained
    by `train` and then loaded back by the reward through `from_pretrained`."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from lit_caprl.models.tiny import build_tokenizer

    tok = build_tokenizer("qwen2")
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        id2label=dict(enumerate(labels)) if labels else None,
        label2id={v: i for i, v in enumerate(labels)} or None,
    )
    torch.manual_seed(0)
    return Qwen2ForSequenceClassification(cfg), tok


def _train(model, tok, batches, loss_fn, out, steps: int = 150):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        loss = loss_fn(model, tok, batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _scenes(seed: int, n: int, objects: tuple[int, int]):
    import random

    from lit_caprl.data import shapes

    rng = random.Random(seed)
    return [shapes.sample_scene(rng, *objects) for _ in range(n)]


def test_classifier_reward_prefers_the_complete_caption(tmp_path):
    from lit_caprl.data.shapes import caption
    from lit_caprl.rewards.classifier import ClassifierReward

    def batch(step):
        scenes = _scenes(step, 16, (2, 4))
        return [caption(s) for s in scenes], [caption(s[:1]) for s in scenes]

    def bradley_terry(model, tok, b):
        good, bad = (model(**tok(t, padding=True, return_tensors="pt")).logits[:, 0] for t in b)
        return -torch.nn.functional.logsigmoid(good - bad).mean()

    model, tok = _tiny_classifier(tmp_path, 1)
    path = _train(model, tok, batch, bradley_terry, tmp_path / "rm")
    reward = ClassifierReward(path)
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    scenes = _scenes(10_000, 32, (2, 4))  # held out
    full = reward([caption(s) for s in scenes], [None] * 32).rewards
    partial = reward([caption(s[:1]) for s in scenes], [None] * 32).rewards
    assert (full > partial).float().mean() > 0.9


def test_nli_fidelity_penalises_a_contradicting_caption(tmp_path):
    from lit_caprl.data.shapes import COLORS, ShapeObject, caption
    from lit_caprl.rewards.classifier import NLIFidelity

    def recolor(o):
        return ShapeObject(**{**o.__dict__, "color": next(c for c in COLORS if c != o.color)})

    def batch(step):
        scenes = _scenes(step, 16, (1, 1))
        refs = [caption(s) for s in scenes] * 2
        hyps = [caption(s) for s in scenes] + [caption([recolor(s[0])]) for s in scenes]
        return refs, hyps, torch.tensor([0] * 16 + [2] * 16)  # entailment, contradiction

    def nli_loss(model, tok, b):
        refs, hyps, labels = b
        return torch.nn.functional.cross_entropy(
            model(**tok(refs, hyps, padding=True, return_tensors="pt")).logits, labels
        )

    model, tok = _tiny_classifier(tmp_path, 3, ("entailment", "neutral", "contradiction"))
    path = _train(model, tok, batch, nli_loss, tmp_path / "nli")
    reward = NLIFidelity(path)
    scenes = _scenes(10_000, 32, (1, 1))
    records = [_record(captions=(caption(s),)) for s in scenes]
    right = reward([caption(s) for s in scenes], records).rewards
    wrong = reward([caption([recolor(s[0])]) for s in scenes], records).rewards
    assert (right > wrong).float().mean() > 0.9
    assert math.isnan(reward([GOLD], [_record(captions=())]).rewards[0])


def test_reference_metric_reads_a_meta_caption_list_as_references():
    """Against short references, the dense caption that names more than they do scores lower
    than the short one: the penalty partial references put on detail."""
    short = "top-left big red circle ."
    record = Record("r", None, (MCQ("what color ?", ("red", "green"), "A"),), (GOLD,), meta={"short_captions": [short]})
    dense = short + " bottom small blue square ."
    out = ReferenceMetric("rouge_l", references="short_captions")([short, dense], [record] * 2)
    assert out.rewards[0] == pytest.approx(1.0) and out.rewards[1] < 1.0
    assert math.isnan(ReferenceMetric(references="short_captions")([short], [_record()]).rewards[0])
