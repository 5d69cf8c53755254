"""CapRLQAReward: seeded draws, letter parsing, frozen reader, deterministic logprob mode."""

from pathlib import Path

import pytest
import torch

from lit_caprl.data.schema import LETTERS, load_records
from lit_caprl.rewards import CapRLQAReward
from lit_caprl.rewards.caprl_qa import first_letter


@pytest.fixture(scope="module")
def records(shapes_root):
    return load_records(Path(shapes_root) / "val.jsonl")[0]


def test_draws_are_seeded_per_image_and_step(tiny_models, records):
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=8, seed=3)
    assert reward.draws(records[0], step=5) == reward.draws(records[0], step=5)
    assert reward.draws(records[0], step=5) != reward.draws(records[0], step=6)
    assert reward.draws(records[0], step=5) != reward.draws(records[1], step=5)


def test_option_shuffling_covers_every_position(tiny_models, records):
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=8)
    seen = set()
    for step in range(20):
        for q, order in reward.draws(records[0], step):
            assert sorted(order) == list(range(len(q.options)))
            seen.add(order.index(LETTERS.index(q.answer)))
    assert seen == {0, 1, 2, 3}


def test_first_letter_parsing():
    assert first_letter("B", 5) == "B"
    assert first_letter("C . because", 5) == "C"
    assert first_letter("the answer is E", 5) == "E"
    assert first_letter("F", 5) is None and first_letter("nothing", 5) is None


def test_reader_is_frozen(tiny_models):
    reward = CapRLQAReward(tiny_models["qwen2"])
    reward.train()
    assert not reward.reader.training
    assert not any(p.requires_grad for p in reward.parameters())


def test_logprob_mode_is_deterministic_and_sample_mode_is_not(tiny_models, records):
    torch.manual_seed(0)
    captions, recs = [r.captions[0] for r in records[:6]], records[:6]
    exact = CapRLQAReward(tiny_models["qwen2"], num_draws=4, mode="logprob")
    out = exact(captions, recs)
    first, second = out.rewards, exact(captions, recs).rewards
    assert torch.equal(first, second) and ((first > 0) & (first < 1)).all()
    assert len(out.details[0]["questions"]) == 4 * 4  # 4 draws x 4 cyclic rotations
    assert sum(out.details[0]["scores"]) / 16 == pytest.approx(float(first[0]), abs=1e-6)
    sampled = CapRLQAReward(tiny_models["qwen2"], num_draws=4, mode="sample", temperature=1.0)
    runs = torch.stack([sampled(captions, recs).rewards for _ in range(5)])
    assert runs.std(dim=0).sum() > 0
    assert set(runs.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_rotations_average_over_every_cyclic_order(tiny_models, records):
    """With rotations each draw is asked once per cyclic shift; one caption, one draw -> 4 reader prompts."""
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=1, rotations=True)
    calls = []
    original = reward._score_logprob
    reward._score_logprob = lambda texts, correct, n: calls.append(sorted(correct)) or original(texts, correct, n)
    reward([records[0].captions[0]], records[:1])
    assert calls == [[0, 1, 2, 3]]


def test_reader_without_single_token_letters_is_a_clear_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lit_caprl.rewards.caprl_qa import option_letter_ids

    words = ["[UNK]", "the", "answer", "is", "A", "B"]  # no C..H
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    assert option_letter_ids(fast, "r", n=2) == [4, 5]
    with pytest.raises(ValueError, match="reader 'my/reader': option letter 'C' is not a single token"):
        option_letter_ids(fast, "my/reader", n=5)
