"""Prism-style evaluation: a benchmark in Prism's row format measures what our own format does."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from oracles import ideal_option_logits

from lit_caprl import cli, evaluate, report
from lit_caprl.data.schema import LETTERS, load_records
from lit_caprl.rewards import CapRLQAReward, RewardOutput


class _FixedJudge:
    """A judge whose per-caption utilities are given: isolates the row arithmetic."""

    def __init__(self, values):
        self.values, self.seed = torch.tensor(values), 0

    def __call__(self, captions, records):
        return RewardOutput(self.values[: len(captions)], {})


def test_best_of_n_hand_computed(shapes_root):
    records = load_records(Path(shapes_root) / "val.jsonl")[0][:2]
    judge = _FixedJudge([0.25, 0.75, 0.5, 0.0])
    row = report.score_row(judge, ["a b", "c", "d", "e"], records, seeds=[0], num_captions=2)
    assert row["utility"] == pytest.approx(0.375)  # mean of all four captions
    assert row["best_of_n"] == pytest.approx(0.625)  # (max(0.25, 0.75) + max(0.5, 0.0)) / 2
    # Noise over images: per-image means 0.5 and 0.25, sample std 0.25 / sqrt(2) = 0.1768, over sqrt(2).
    assert row["utility_se"] == pytest.approx(0.125)
    assert row["length"] == pytest.approx(1.25) and row["precision"] is not None  # ShapesWorld: fidelity too


def _benchmarks(shapes_root: str, out: Path, n: int = 6) -> tuple[Path, Path]:
    """The same scenes twice: our JSONL, and Prism's one row per question ({image, prompt, answer})."""
    records = load_records(Path(shapes_root) / "val.jsonl")[0][:n]
    shutil.copytree(Path(shapes_root) / "images", out / "images")
    ours = (Path(shapes_root) / "val.jsonl").read_text().splitlines()[:n]
    (out / "ours.jsonl").write_text("".join(line + "\n" for line in ours))
    prism = [
        {
            "image": f"images/{r.image.name}",
            "image_id": r.id,
            "answer": q.answer,
            "prompt": q.question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(q.options)),
        }
        for r in records
        for q in r.questions
    ]
    (out / "prism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prism))
    return out / "ours.jsonl", out / "prism.jsonl"


def test_prism_benchmark_gives_the_same_utility_as_our_format(tiny_models, shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CAPRL_CACHE", str(tmp_path / "cache"))
    # A random reader's argmax utility is 0 on both; its probabilities show any difference in the
    # questions, options, their order, or the draws (seeded by record id) that the two formats ask.
    monkeypatch.setattr(
        evaluate,
        "utility_judge",
        lambda reader, answer_format=None: CapRLQAReward(
            reader, num_draws=4, mode="logprob", score="prob", rotations=False, answer_format=answer_format
        ),
    )
    ours, prism = _benchmarks(shapes_root, tmp_path / "bench")
    policies = {"sft": tiny_models["qwen2_5_vl"]}
    common = dict(reader=tiny_models["qwen2"], policies=policies, n=6, seeds=[0, 1], max_new_tokens=12)
    by_ours = report.evaluate_benchmarks({"shapes": str(ours)}, **common)["shapes"]["rows"]
    by_prism = report.evaluate_benchmarks({"prism": str(prism)}, fmt="prism", **common)["prism"]["rows"]
    assert by_prism["sft"]["utility"] == pytest.approx(by_ours["sft"]["utility"], abs=1e-6)
    assert by_prism["sft"]["utility"] != pytest.approx(by_prism["empty"]["utility"], abs=1e-4)  # it sees captions
    assert by_prism["empty"]["utility"] == pytest.approx(by_ours["empty"]["utility"], abs=1e-6)
    assert by_ours["sft"]["precision"] is not None and by_prism["sft"]["precision"] is None  # no scene: no fidelity
    assert "gold" in by_ours and "gold" not in by_prism  # Prism rows carry no captions


def test_eval_cli_writes_a_table_per_benchmark_with_best_of_n(tiny_models, shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CAPRL_CACHE", str(tmp_path / "cache"))
    ours, prism = _benchmarks(shapes_root, tmp_path / "bench", n=4)
    argv = [
        "eval",
        "--benchmark",
        f"prism={prism}",
        "--format",
        "prism",
        "--reader",
        tiny_models["qwen2"],
        "--policy",
        f"sft={tiny_models['qwen2_5_vl']}",
        "--num-captions",
        "3",
        "--max-new-tokens",
        "8",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "eval"),
    ]
    assert cli.main(argv) == 0
    payload = json.loads((tmp_path / "eval" / "report.json").read_text())
    row = payload["benchmarks"]["prism"]["rows"]["sft"]
    assert row["best_of_n"] >= row["utility"] and row["precision"] is None
    assert "**prism**" in (tmp_path / "eval" / "report.md").read_text()


def test_report_cli_on_shapesworld_adds_fidelity_gold_and_the_readers_accuracy(tiny_models, shapes_root, tmp_path):
    argv = [
        "report",
        "--data",
        f"{shapes_root}/val.jsonl",
        "--reader",
        tiny_models["qwen2"],
        "--policy",
        f"sft={tiny_models['qwen2_5_vl']}",
        "--n",
        "4",
        "--n-reader",
        "4",
        "--seeds",
        "0",
        "--max-new-tokens",
        "8",
        "--out",
        str(tmp_path / "report"),
    ]
    assert cli.main(argv) == 0
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = payload["benchmarks"]["heldout"]["rows"]
    assert set(rows) == {"sft", "gold", "empty"} and rows["gold"]["precision"] == 1.0
    assert 0 <= payload["reader"]["accuracy"] <= 1


def test_report_keeps_the_rows_of_an_earlier_report_scored_with_the_same_settings(
    tiny_models, shapes_root, tmp_path, monkeypatch, capsys
):
    """The pipeline scores SFT, DPO and gold while GRPO trains, and the final report adds GRPO:
    the table must be the one a single report gives, and mismatched settings must refuse."""
    base = ["report", "--data", f"{shapes_root}/val.jsonl", "--reader", tiny_models["qwen2"], "--n-reader", "4"]
    base += ["--seeds", "0", "--max-new-tokens", "8"]
    policy = tiny_models["qwen2_5_vl"]
    assert cli.main([*base, "--n", "4", "--policy", f"a={policy}", "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "report.json").read_text())

    monkeypatch.setattr(report, "reader_quality", lambda *a, **k: pytest.fail("the earlier accuracy is kept"))
    later = ["--n", "4", "--policy", f"b={policy}", "--rows-from", str(tmp_path / "first")]
    assert cli.main([*base, *later, "--out", str(tmp_path / "final")]) == 0
    final = json.loads((tmp_path / "final" / "report.json").read_text())
    rows = final["benchmarks"]["heldout"]["rows"]
    assert list(rows) == ["a", "b", "gold", "empty"]  # the ceiling and the floor still close the table
    for name in ("a", "gold", "empty"):
        assert rows[name] == first["benchmarks"]["heldout"]["rows"][name]
    assert rows["b"] == rows["a"]  # the same captioner, scored afresh the same way
    assert final["benchmarks"]["heldout"]["examples"]["a"] == first["benchmarks"]["heldout"]["examples"]["a"]
    assert final["reader"] == first["reader"]

    again = ["--rows-from", str(tmp_path / "first"), "--out", str(tmp_path / "x")]
    assert cli.main([*base, "--n", "3", "--policy", f"b={policy}", *again]) == 2
    refused = capsys.readouterr().err
    assert "scored with other settings" in refused and "(n: 4 there, 3 here)" in refused
    assert cli.main([*base, "--n", "4", "--policy", f"a={policy}", *again]) == 2
    assert "rows ['a'] were scored earlier" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_scores_captions_written_by_caption_and_names_missing_ids(tiny_models, shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CAPRL_CACHE", str(tmp_path / "cache"))
    _, prism = _benchmarks(shapes_root, tmp_path / "bench", n=4)
    caps = tmp_path / "caps.jsonl"
    assert (
        cli.main(
            [
                "caption",
                "--model",
                tiny_models["qwen2_5_vl"],
                "--in",
                str(prism),
                "--format",
                "prism",
                "--out",
                str(caps),
                "--num-captions",
                "2",
                "--temperature",
                "1.0",
                "--max-new-tokens",
                "6",
                "--accelerator",
                "cpu",
                "--devices",
                "1",
            ]
        )
        == 0
    )
    base = [
        "eval",
        "--benchmark",
        f"prism={prism}",
        "--format",
        "prism",
        "--reader",
        tiny_models["qwen2"],
        "--num-captions",
        "2",
        "--seeds",
        "0",
    ]
    assert cli.main([*base, "--captions", f"gpu={caps}", "--out", str(tmp_path / "eval")]) == 0
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())["benchmarks"]["prism"]["rows"]
    written = [c for line in caps.read_text().splitlines() for c in json.loads(line)["captions"]]
    assert len(written) == 8 and rows["gpu"]["length"] == pytest.approx(sum(len(c.split()) for c in written) / 8)
    caps.write_text("\n".join(caps.read_text().splitlines()[:3]) + "\n")  # one image's captions lost
    with pytest.raises(ValueError, match=r"caps.jsonl: fewer than 2 captions for 1 images"):
        cli.main([*base, "--captions", f"gpu={caps}", "--out", str(tmp_path / "eval2")])


def test_caption_fidelity_hand_computed():
    """Two scenes; claims matched as a multiset, micro-averaged over all claims and objects."""
    from lit_caprl.data.schema import Record

    def scene(*objs):
        return Record(
            id="s",
            image=Path("x.png"),
            questions=(),
            meta={"objects": [dict(zip(("position", "size", "color", "shape"), o.split(), strict=True)) for o in objs]},
        )

    records = [scene("top big red circle", "left small blue cross"), scene("center big green square")]
    captions = [
        "top big red circle . top big red circle . right big red circle .",  # 1 true (repeat counts once), 3 claims
        "center big green square . and more words",  # 1 true, 1 claim
    ]
    got = evaluate.caption_fidelity(captions, records)
    assert got["precision"] == pytest.approx(2 / 4)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["length"] == pytest.approx((15 + 8) / 2)  # words, "." included


def test_utility_and_reader_accuracy_of_an_ideal_reader(tiny_models, shapes_root, monkeypatch):
    """Through the judge `eval` and `report` use: gold captions have utility 1, empty ones 0,
    and an ideal reader scores 1 on the labelled (caption, question) pairs, "cannot answer" included;
    one that always says "cannot answer" scores exactly the share of such pairs."""
    from lit_caprl import mcq
    from lit_caprl.data.shapes_qa import reader_examples
    from lit_caprl.models.loading import load_model

    records = load_records(Path(shapes_root) / "val.jsonl")[0]
    monkeypatch.setattr(mcq, "option_logits", ideal_option_logits)
    judge = evaluate.utility_judge(tiny_models["qwen2"], "cloze")
    assert evaluate.caption_utility(judge, [r.captions[0] for r in records], records) == 1.0
    assert evaluate.caption_utility(judge, [""] * len(records), records) == 0.0
    reader = load_model(tiny_models["qwen2"])
    assert evaluate.reader_accuracy(reader, records, "cloze") == {"accuracy": 1.0, "cannot_answer_accuracy": 1.0}
    monkeypatch.setattr(
        mcq,
        "option_logits",
        lambda a, texts, options, *x, **k: torch.tensor([[0.0] * (len(o) - 1) + [1.0] for o in options]),
    )
    examples = reader_examples(records, 0, "cloze")
    share = sum(e["correct"] == len(e["options"]) - 1 for e in examples) / len(examples)
    got = evaluate.reader_accuracy(reader, records, "cloze")
    assert got["accuracy"] == pytest.approx(share) and got["cannot_answer_accuracy"] == 1.0


def test_reward_curve_reads_rollout_steps_and_rewards(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,rollout_step,step,train/loss,train/reward\n0,1.0,0,0.5,0.25\n0,,1,0.4,\n0,2.0,1,0.3,0.5\n")
    assert report.reward_curve(csv) == [(1, 0.25), (2, 0.5)]
