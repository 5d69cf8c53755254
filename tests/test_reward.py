"""CapRLQAReward and MCQ answering: seeded draws, answer parsing, frozen reader, exact logprob mode."""

from pathlib import Path

import pytest
import torch
from oracles import ideal_option_logits

from lit_caprl import evaluate, mcq
from lit_caprl.data import prompts, shapes, shapes_qa
from lit_caprl.data.schema import LETTERS, load_records
from lit_caprl.models.loading import load_model
from lit_caprl.rewards import CapRLQAReward


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


def test_sampled_answer_parsing():
    options = ["red", "red circle", "blue", "cannot answer from the caption"]
    assert mcq.sampled_choice("B", options, "letter") == 1
    assert mcq.sampled_choice("C . because", options, "letter") == 2
    assert mcq.sampled_choice("the answer is D", options, "letter") == 3
    assert mcq.sampled_choice("E", options, "letter") is None and mcq.sampled_choice("no", options, "letter") is None
    assert mcq.sampled_choice("red circle .", options, "cloze") == 1  # the longest option that fits
    assert mcq.sampled_choice("red square", options, "cloze") == 0
    assert mcq.sampled_choice("cannot answer from the caption", options, "cloze") == 3
    assert mcq.sampled_choice("green", options, "cloze") is None and mcq.sampled_choice("", options, "cloze") is None


@pytest.mark.parametrize("attn", ["eager", "sdpa"])  # a user's choice, and the default
def test_cloze_scores_equal_separate_full_forward_passes(tiny_models, records, attn):
    """Shared-prompt cloze scoring (a prompt's options side by side in one pass) vs an
    independent formulation: one plain forward per (prompt, option) sequence, summing
    log p of the option's tokens and EOS."""
    reader = load_model(tiny_models["qwen2"], attn_implementation=attn)
    texts, shown = [], []
    for r in records[:3]:
        q = r.questions[0]
        body = prompts.reader_question(r.captions[0], q.question, list(q.options), "cloze")
        texts.append(reader.chat(body, False, prompts.ANSWER_PREFIX))
        shown.append(prompts.shown_options(q.options))
    shown[1] = shown[1][:3]  # rows with fewer options are padded with -inf
    got = mcq.option_logits(reader, texts, shown, "cloze", batch_size=2)
    tok = reader.tokenizer
    for i, (text, options) in enumerate(zip(texts, shown, strict=True)):
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        for j, option in enumerate(options):
            target = tok(option, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                logits = reader.model(torch.tensor([prompt + target])).logits[0].log_softmax(-1)
            want = sum(float(logits[len(prompt) - 1 + k, t]) for k, t in enumerate(target))
            assert float(got[i, j]) == pytest.approx(want, abs=1e-4)
    assert torch.isinf(got[1, 3:]).all() and torch.isfinite(got[0]).all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])  # a user's choice, and the default
@pytest.mark.parametrize(("answer_format", "group"), [("letter", 4), ("cloze", 4), ("letter", 5), ("cloze", 5)])
def test_shared_prefix_scores_equal_scoring_each_prompt_alone(tiny_models, records, answer_format, group, attn):
    """`group`: runs of prompts about one caption share the encoded instructions and caption.
    Checked against an independent formulation, one unpadded forward per prompt: letter
    logits at the answer position (cloze: against the group=1 path, tested above)."""
    reader = load_model(tiny_models["qwen2"], attn_implementation=attn)
    texts, shown = [], []
    for r in records[:3]:  # captions of different lengths; 4 prompts each: 2 questions x 2 option orders
        for q in [r.questions[0], r.questions[1]]:
            for options in [list(q.options), list(reversed(q.options))]:
                body = prompts.reader_question(r.captions[0], q.question, options, answer_format)
                texts.append(reader.chat(body, False, prompts.ANSWER_PREFIX))
                shown.append(prompts.shown_options(options))
    # group 5: runs straddle captions (as with questions of different option counts)
    got = mcq.option_logits(reader, texts, shown, answer_format, batch_size=8, group=group)
    if answer_format == "cloze":
        want = mcq.option_logits(reader, texts, shown, answer_format)
        assert torch.allclose(got, want, atol=1e-4)
        return
    letters = mcq.option_letter_ids(reader.tokenizer, "tiny", len(shown[0]))
    for i, text in enumerate(texts):
        ids = reader.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = reader.model(ids).logits[0, -1, letters]
        assert torch.allclose(got[i], want, atol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("group", [1, 4, 6])
def test_shared_prefix_sampling_draws_what_whole_prompts_draw(tiny_models, records, group, attn):
    """`sample` mode continues from the shared prefix's cache. Under one seed it writes exactly
    what `generate` writes from the whole, left-padded prompts: the same distributions
    (group 6: runs straddle captions)."""
    reader = load_model(tiny_models["qwen2"], attn_implementation=attn)
    texts = []
    for r in records[:3]:
        for q in r.questions[:2]:
            for options in [list(q.options), list(reversed(q.options))]:
                body = prompts.reader_question(r.captions[0], q.question, options, "letter")
                texts.append(reader.chat(body, False, prompts.ANSWER_PREFIX))
    torch.manual_seed(0)
    got = mcq.sample_answers(reader, texts, max_new_tokens=6, temperature=1.0, batch_size=len(texts), group=group)
    torch.manual_seed(0)
    want = reader.decode(reader.generate(reader.encode_prompts(texts), 6, temperature=1.0))
    assert got == want and len(set(want)) > len(want) // 2  # varied answers, not one repeated


def test_answer_format_defaults_to_letter_and_a_bad_record_names_file_and_field(tmp_path):
    assert mcq.resolve_format("Qwen/Qwen2.5-3B-Instruct") == "letter"  # a Hub id records nothing
    assert mcq.resolve_format(tmp_path, "cloze") == "cloze"
    record = tmp_path / mcq.EXPORT_RECORD
    record.write_text('{"answer_format": "essay"}')
    with pytest.raises(ValueError, match=r"lit_caprl.json: field answer_format must be one of"):
        mcq.resolve_format(tmp_path)
    record.write_text('{"answer_format": ')
    with pytest.raises(ValueError, match=r"lit_caprl.json: not valid JSON"):
        mcq.resolve_format(tmp_path)


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


def test_logprob_mode_scores_a_repeated_caption_once(tiny_models, records, monkeypatch):
    """A GRPO group often samples the same caption twice: exact scores are computed once and
    shared, equal to scoring every caption of the group on its own."""
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=3, rotations=False)
    a, b = records[:2]
    captions, recs = [a.captions[0], "a red circle", a.captions[0], b.captions[0], a.captions[0]], [a, a, a, b, b]
    alone = torch.cat([reward([c], [r], step=5).rewards for c, r in zip(captions, recs, strict=True)])
    prompts_scored = []
    score = reward._score_logprob

    def counting(texts, *rest, **kwargs):
        prompts_scored.append(len(texts))
        return score(texts, *rest, **kwargs)

    monkeypatch.setattr(reward, "_score_logprob", counting)
    out = reward(captions, recs, step=5)
    assert prompts_scored == [4 * 3]  # (a, gold), (a, red circle), (b, gold), (b, a's gold): 4 distinct pairs
    assert torch.allclose(out.rewards, alone, atol=1e-6) and out.rewards[0] == out.rewards[2]
    assert out.details[2] == out.details[0] and len(out.details) == 5
    assert torch.equal(out.terms["caprl_qa"], out.rewards)


def test_cloze_reward_is_a_probability_over_the_options(tiny_models, records):
    captions, recs = [r.captions[0] for r in records[:4]], records[:4]
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=3, answer_format="cloze", rotations=False)
    first = reward(captions, recs).rewards
    assert torch.equal(first, reward(captions, recs).rewards) and ((first > 0) & (first < 1)).all()
    sampled = CapRLQAReward(tiny_models["qwen2"], num_draws=3, mode="sample", answer_format="cloze")
    assert set(sampled(captions, recs).rewards.unique().tolist()) <= {0.0, 1 / 3, 2 / 3, 1.0}


def test_rotations_average_over_every_cyclic_order(tiny_models, records):
    """With rotations each draw is asked once per cyclic shift; one caption, one draw -> 4 reader prompts."""
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=1, rotations=True)
    calls = []
    original = reward._score_logprob
    reward._score_logprob = lambda texts, shown, correct, group: (
        calls.append(sorted(correct)) or original(texts, shown, correct, group)
    )
    reward([records[0].captions[0]], records[:1])
    assert calls == [[0, 1, 2, 3]]


def test_reader_without_single_token_letters_is_a_clear_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lit_caprl.mcq import option_letter_ids

    words = ["[UNK]", "the", "answer", "is", "A", "B"]  # no C..H
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    assert option_letter_ids(fast, "r", n=2) == [4, 5]
    with pytest.raises(ValueError, match="model 'my/reader': option letter 'C' is not a single token"):
        option_letter_ids(fast, "my/reader", n=5)


def test_caprl_template_asks_as_caprl_does():
    body = prompts.reader_question("a red bus .", "what colour is the bus ?", ["red", "blue"], "caprl")
    assert body.startswith(prompts.CAPRL_INSTRUCTION) and "Example 1" in body and "Example 2" in body
    assert body.index("<caption>\na red bus .\n</caption>") > body.index("Example 2")  # the caption after the examples
    assert body.endswith("Question: what colour is the bus ?\nA) red\nB) blue\nC) Can not answer based on the caption")
    shown = prompts.shown_options(["red", "blue"], "caprl")
    assert mcq.sampled_choice(" B. The caption says blue.", shown, "caprl") == 1
    assert mcq.sampled_choice(" C", shown, "caprl") == 2  # "cannot answer"
    assert mcq.sampled_choice(" F", shown, "caprl") is None  # a letter A-I past the options: wrong, not skipped
    with pytest.raises(ValueError, match="at most 8 options"):
        prompts.reader_question("c", "q", [str(i) for i in range(9)], "caprl")


@pytest.mark.parametrize("oracle, expected", [(True, 1.0), (False, None)])
def test_caprl_sample_reward_gives_an_oracle_reader_one(tiny_models, records, monkeypatch, oracle, expected):
    """A reader that always names the right option's letter earns exactly 1; one that always names
    A earns about 1/4: the shuffled options are mapped back to the answer key correctly."""
    right = {(r.id, q.question): q.answer_text for r in records for q in r.questions}

    def answers(adapter, texts, *args, **kwargs):
        out = []
        for text in texts:
            asked = text[text.rindex("<caption>\n") + 10 :].split("<|im_end|>")[0]  # caption (= record id) onwards
            caption, question = asked.split("\n")[0], asked.split("Question: ")[1].split("\n")[0]
            lines = [ln for ln in asked.split("\n") if ln[1:3] == ") "]
            pick = next(ln[0] for ln in lines if ln[3:] == right[caption, question]) if oracle else "A"
            out.append(f" {pick}.")
        return out

    monkeypatch.setattr(mcq, "sample_answers", answers)
    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=8, mode="sample", answer_format="caprl")
    rewards = reward([r.id for r in records], records, step=0).rewards
    if expected is not None:
        assert torch.equal(rewards, torch.ones(len(records)))
    else:
        assert 0.1 < float(rewards.mean()) < 0.4


@pytest.mark.parametrize("answer_format", ["cloze", "letter"])
@pytest.mark.parametrize("rotations", [False, True])
@pytest.mark.parametrize("score", ["prob", "argmax"])
def test_an_ideal_reader_earns_one_from_gold_captions_and_nothing_from_empty_ones(
    tiny_models, records, monkeypatch, answer_format, rotations, score
):
    """Whatever the option shuffle and rotation, the reward maps the reader's pick back to the
    answer key: gold captions earn ~1, empty ones ~0 (their right answer, "cannot answer", is
    never the key), and a caption naming one object of a scene earns the share of drawn
    questions that object answers, counted here from the questions themselves."""
    monkeypatch.setattr(mcq, "option_logits", ideal_option_logits)
    reward = CapRLQAReward(
        tiny_models["qwen2"], num_draws=8, score=score, rotations=rotations, answer_format=answer_format
    )
    tol = 1e-3 if score == "prob" else 0.0
    gold = reward([r.captions[0] for r in records], records, step=3).rewards
    assert gold.tolist() == pytest.approx([1.0] * len(records), abs=tol)
    empty = reward([""] * len(records), records, step=3).rewards
    assert empty.tolist() == pytest.approx([0.0] * len(records), abs=tol)
    firsts = [shapes.caption(evaluate.scene_objects(r)[:1]) for r in records]
    want = []
    for r, cap in zip(records, firsts, strict=True):
        named = shapes_qa.parse_caption(cap)
        asked = [q for q, _ in reward.draws(r, 3)]
        want.append(
            sum(shapes_qa.answer_from_objects(q.question, list(q.options), named) == q.answer_text for q in asked)
            / len(asked)
        )
    assert 0 < sum(want) < len(want)  # some questions need the other objects
    assert reward(firsts, records, step=3).rewards.tolist() == pytest.approx(want, abs=tol)


def test_a_reader_that_prefers_a_wrong_option_or_cannot_answer_earns_nothing(tiny_models, records, monkeypatch):
    def wrong(adapter, texts, options, answer_format, *args, **kwargs):
        right = ideal_option_logits(adapter, texts, options, answer_format)
        logits = torch.zeros_like(right)
        for i, row in enumerate(right):  # the first option that is neither the answer nor "cannot answer"
            logits[i, next(j for j in range(row.numel() - 1) if row[j] == 0)] = 10.0
        return logits

    reward = CapRLQAReward(tiny_models["qwen2"], num_draws=8, score="argmax", rotations=True, answer_format="cloze")
    gold = [r.captions[0] for r in records]
    monkeypatch.setattr(mcq, "option_logits", wrong)
    assert reward(gold, records).rewards.tolist() == [0.0] * len(records)
    monkeypatch.setattr(
        mcq,
        "option_logits",
        lambda a, texts, options, *x, **k: torch.tensor([[0.0] * (len(o) - 1) + [10.0] for o in options]),
    )
    assert reward(gold, records).rewards.tolist() == [0.0] * len(records)
