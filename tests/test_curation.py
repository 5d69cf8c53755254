"""QA curation: the keep rule, rotations, and `lit-caprl curate` end to end on tiny models."""

import json
import re

import torch

from lit_caprl.cli import main
from lit_caprl.curation import _rotations, keep_question
from lit_caprl.data import shapes, shapes_qa
from lit_caprl.data.schema import MCQ, load_records


def test_keep_rule_needs_the_image_and_no_blind_guess():
    assert keep_question(visual=1.0, blind=0.0)
    assert not keep_question(visual=0.75, blind=0.0)  # strictly above tau_v
    assert not keep_question(visual=1.0, blind=0.25)  # strictly below tau_b
    assert not keep_question(visual=0.5, blind=0.5)


def test_rotations_cover_every_position_and_track_the_answer():
    q = MCQ("what color ?", ("red", "blue", "green", "yellow"), "C")
    rots = _rotations(q)
    assert sorted(right for _, right in rots) == [0, 1, 2, 3]
    assert all(options[right] == "green" for options, right in rots)


def test_curate_writes_kept_records_and_stats(tiny_models, tmp_path):
    data = shapes.write_dataset(tmp_path / "leaky", n_train=0, n_val=6, seed=0, leaky=1.0)
    out = tmp_path / "curated"
    args = ["--data", str(data / "val.jsonl"), "--vlm", tiny_models["qwen2_5_vl"], "--reader", tiny_models["qwen2"]]
    assert main(["curate", *args, "--out", str(out), "--tau-v", "-1", "--tau-b", "2"]) == 0  # keep everything
    stats = json.loads((out / "stats.json").read_text())
    assert stats["questions"] == stats["kept"] == sum(t["n"] for t in stats["by_type"].values())
    assert stats["by_type"]["leaky"]["n"] == 6  # every scene got one leaky question
    kept, problems = load_records(out / "curated.jsonl")
    assert problems == [] and len(kept) == 6 and kept[0].image.is_relative_to(out.resolve())
    assert all(len(v) == len(r.questions) for r in kept for v in r.meta["curation"].values())


def test_curation_keeps_what_needs_the_image_with_judges_that_know(tiny_models, tmp_path, monkeypatch):
    """A VLM that reads the scene off the image answers every question; a blind reader answers
    only what the question gives away ("what color is the red circle ?") and else says it
    cannot. With the default thresholds every leaky question goes and every other one stays,
    and the stats carry the judges' accuracies: CapRL's rule, wired through every rotation."""
    from lit_caprl import mcq
    from lit_caprl.curation import curate

    data = shapes.write_dataset(tmp_path / "leaky", n_train=0, n_val=6, seed=0, leaky=1.0)
    records, _ = load_records(data / "val.jsonl")
    scenes = {r.load_image().tobytes(): [shapes.ShapeObject(**o) for o in r.meta["objects"]] for r in records}

    def judges(adapter, texts, options, answer_format, batch_size=64, images=None, group=1):
        rows = []
        for i, (text, shown) in enumerate(zip(texts, options, strict=True)):
            question = text.split(" question : ")[1].split(" options : ")[0]
            if images is not None:
                value = shapes_qa.answer_from_objects(question, list(shown), scenes[images[i].tobytes()])
            else:
                leak = re.fullmatch(r"what color is the (\S+) \S+ \?", question)
                value = leak.group(1) if leak else shown[-1]  # the last option is "cannot answer"
            rows.append([10.0 if o == value else 0.0 for o in shown])
        return torch.tensor(rows)

    monkeypatch.setattr(mcq, "option_logits", judges)
    stats = curate(
        str(data / "val.jsonl"),
        tiny_models["qwen2_5_vl"],
        tiny_models["qwen2"],
        str(tmp_path / "out"),
        answer_format="cloze",
    )
    leaky = stats["by_type"].pop("leaky")
    assert leaky == {"n": 6, "kept": 0, "visual": 1.0, "blind": 1.0}
    for t in stats["by_type"].values():
        assert t["kept"] == t["n"] and t["visual"] == 1.0 and t["blind"] == 0.0
    assert stats["kept"] == stats["questions"] - 6
