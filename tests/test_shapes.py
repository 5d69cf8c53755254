import hashlib
import random
from pathlib import Path

import pytest

from lit_caprl.data import ShapesReaderData, prompts, shapes, shapes_qa
from lit_caprl.data.prompts import CANNOT_ANSWER
from lit_caprl.data.schema import LETTERS, load_records
from lit_caprl.data.shapes_qa import reader_examples
from lit_caprl.errors import ConfigError
from lit_caprl.models.tiny import build_tokenizer


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = shapes.write_dataset(tmp_path / "a", 12, 4, seed=3)
    b = shapes.write_dataset(tmp_path / "b", 12, 4, seed=3)
    c = shapes.write_dataset(tmp_path / "c", 12, 4, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_parser_recovers_every_gold_scene():
    rng = random.Random(0)
    for _ in range(200):
        objs = shapes.sample_scene(rng, 1, 5)
        assert sorted(map(repr, shapes_qa.parse_caption(shapes.caption(objs)))) == sorted(map(repr, objs))


def test_match_counts_precision_and_recall():
    truth = [shapes.ShapeObject("top", "big", "red", "circle"), shapes.ShapeObject("left", "small", "blue", "cross")]
    claimed = shapes_qa.parse_caption("top big red circle . center big red circle . top big red circle .")
    assert shapes_qa.match_counts(claimed, truth) == (1, 3, 2)  # a repeated claim counts once


def test_gold_caption_answers_every_question_and_partial_caption_cannot():
    rng = random.Random(1)
    for _ in range(100):
        objs = shapes.sample_scene(rng, 2, 4)
        for q in shapes.make_questions(rng, objs):
            right = q.options[LETTERS.index(q.answer)]
            assert shapes_qa.answer_from_objects(q.question, list(q.options), objs) == right
    a = shapes.ShapeObject("top", "big", "red", "circle")
    b = shapes.ShapeObject("center", "small", "blue", "square")
    q = "what color is the object at center ?"
    assert shapes_qa.answer_from_objects(q, ["red", "blue", "green", "yellow"], [a]) is None
    assert shapes_qa.answer_from_objects(q, ["red", "blue", "green", "yellow"], [a, b]) == "blue"


def test_short_captions_name_the_most_salient_objects_and_mostly_one():
    rng = random.Random(2)
    lengths = []
    for _ in range(2000):
        objs = shapes.sample_scene(rng, 4, 4)
        (cap,) = shapes.short_captions(rng, objs, 1)
        named = shapes_qa.parse_caption(cap)
        salient = sorted(objs, key=lambda o: (o.size == "small", shapes.POSITIONS.index(o.position)))
        assert set(named) == set(salient[: len(named)])  # the big ones first, then reading order
        assert cap == shapes.caption(named)  # written in reading order, like a gold caption
        lengths.append(len(named))
    shares = [lengths.count(k) / len(lengths) for k in (1, 2, 3, 4)]
    assert shares == pytest.approx(shapes.SHORT_LENGTHS, abs=0.03)


@pytest.mark.parametrize("answer_format", ["letter", "cloze"])
def test_reader_examples_label_omitted_objects_cannot_answer(shapes_root, answer_format):
    records, _ = load_records(Path(shapes_root) / "train.jsonl")
    examples = reader_examples(records, seed=0, answer_format=answer_format)
    cannot = [e for e in examples if e["correct"] == len(e["options"]) - 1]
    assert 0.1 < len(cannot) / len(examples) < 0.6
    assert all(CANNOT_ANSWER in e["prompt"] and e["options"][-1] == CANNOT_ANSWER for e in examples)
    for e in examples[:200]:
        right = e["options"][e["correct"]]
        assert e["target"] == (LETTERS[e["correct"]] if answer_format == "letter" else right)
        assert (f"{LETTERS[e['correct']]} {right}" in e["prompt"]) == (answer_format == "letter")


def test_reader_data_trains_on_a_share_of_empty_captions_and_validates_on_all(shapes_root):
    data = ShapesReaderData(shapes_root, answer_format="cloze", empty_captions=0.25)
    data.setup("fit")
    n_questions = {
        split: sum(len(r.questions) for r in load_records(Path(shapes_root) / f"{split}.jsonl")[0])
        for split in ("train", "val")
    }

    def empty(ds) -> int:
        return sum("caption :  question :" in ds[i]["prompt"] for i in range(len(ds)))

    assert empty(data.val_set) == n_questions["val"]  # every val record asked on its empty caption
    assert 0.1 * n_questions["train"] < empty(data.train_set) < 0.45 * n_questions["train"]
    assert len(data.train_set) == 3 * n_questions["train"] + empty(data.train_set)  # gold + 2 partial, none lost
    with pytest.raises(ValueError, match="empty_captions"):
        ShapesReaderData(shapes_root, empty_captions=1.5)


def test_vocabulary_covers_all_text(shapes_root):
    tok = build_tokenizer("qwen2")
    records, _ = load_records(Path(shapes_root) / "train.jsonl")
    for e in reader_examples(records, seed=0)[:250] + reader_examples(records, seed=0, answer_format="cloze")[:250]:
        ids = tok(e["prompt"] + " " + e["prefill"])["input_ids"]
        assert tok.unk_token_id not in ids, e["prompt"]
    q = records[0].questions[0]
    for text in (prompts.DEFAULT_CAPTION_PROMPT, prompts.visual_question(q.question, q.options)):
        assert tok.unk_token_id not in tok(text)["input_ids"], text


def test_leaky_questions_are_answerable_from_their_own_text(tmp_path):
    root = shapes.write_dataset(tmp_path / "leaky", n_train=40, n_val=0, seed=0, leaky=0.5)
    records, _ = load_records(root / "train.jsonl")
    leaky = [q for r in records for q in r.questions if q.type == "leaky"]
    assert 10 <= len(leaky) <= 30
    for q in leaky:
        assert shapes_qa.answer_from_objects(q.question, list(q.options), []) == q.answer_text  # no caption needed
    plain = shapes.write_dataset(tmp_path / "plain", n_train=40, n_val=0, seed=0)
    assert all(q.type != "leaky" for r in load_records(plain / "train.jsonl")[0] for q in r.questions)


def test_shapes_datamodules_write_data_only_when_asked_and_only_once(tmp_path):
    import lightning as L
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from lit_caprl.data import ShapesCaptionData, ShapesPromptData, ShapesReaderData

    for cls in (ShapesCaptionData, ShapesReaderData, ShapesPromptData):
        assert is_overridden("prepare_data", cls(str(tmp_path / "x")), L.LightningDataModule)
    with pytest.raises(ConfigError, match=r"data.init_args.root: .*/typo holds no ShapesWorld data set"):
        ShapesPromptData(str(tmp_path / "typo")).prepare_data()  # a mistyped root: no fresh data behind your back
    assert not (tmp_path / "typo").exists()
    dm = ShapesCaptionData(str(tmp_path / "s"), n_train=6, n_val=2, generate=True)
    dm.prepare_data()
    first = (tmp_path / "s" / "train.jsonl").stat().st_mtime_ns
    dm.prepare_data()
    assert (tmp_path / "s" / "train.jsonl").stat().st_mtime_ns == first
    dm.setup()
    assert len(dm.train_set) == 6 * 2  # two short captions per scene
