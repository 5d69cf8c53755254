"""The report: gap arithmetic, the files it writes, and its W&B artifact (offline)."""

import json

import pytest

from lit_caprl import report, report_files

ROWS = {
    "sft": {"utility": 0.40, "best_of_n": None, "precision": 0.9, "recall": 0.5, "length": 10.0},
    "grpo": {"utility": 0.70, "best_of_n": None, "precision": 0.85, "recall": 0.9, "length": 20.0},
    "gold": {"utility": 0.90, "best_of_n": None, "precision": 1.0, "recall": 1.0, "length": 21.0},
}


def test_gap_closed_hand_computed():
    assert report.gap_closed(ROWS, "grpo") == pytest.approx(0.6)  # (0.7 - 0.4) / (0.9 - 0.4)
    flat = {**ROWS, "gold": {**ROWS["gold"], "utility": 0.41}}
    assert report.gap_closed(flat, "grpo") is None  # headroom within evaluation noise: no ratio


def test_write_report_files_and_schema(tmp_path):
    tables = {"heldout": {"rows": ROWS, "images": []}}
    md = report_files.write_report(tmp_path, tables, {"grpo": {"wall_s": 300.0}}, [(1, 0.2), (2, 0.3)])
    payload = json.loads((tmp_path / "report.json").read_text())
    table = payload["benchmarks"]["heldout"]
    assert set(table["rows"]) == {"sft", "grpo", "gold"} and payload["stages"]["grpo"]["wall_s"] == 300.0
    assert set(table["rows"]["grpo"]) == {
        "utility",
        "utility_se",
        "best_of_n",
        "precision",
        "recall",
        "length",
        "repetition",
    }
    assert table["gap_closed"]["grpo"] == pytest.approx(0.6)
    assert "| grpo | 0.700 | - | 0.850 |" in md and (tmp_path / "report.png").stat().st_size > 0


def test_a_time_limited_stage_is_flagged_at_the_top():
    stages = {
        "reader_sft": {"wall_s": 480.0, "steps": 5702, "max_steps": 7000, "stopped_by": "time_limit"},
        "grpo": {"wall_s": 250.0, "steps": 800, "rollout_steps": 800, "stopped_by": "steps"},
    }
    md = report_files.markdown({"heldout": {"rows": ROWS, "images": []}}, stages)
    assert md.startswith("**WARNING: reader_sft was stopped by its time limit after 5,702 of 7,000 steps")
    assert "| reader_sft | 480 | 5,702 | time_limit |" in md and "| grpo | 250 | 800 | steps |" in md
    assert "WARNING" not in report_files.markdown({"heldout": {"rows": ROWS, "images": []}}, {"grpo": stages["grpo"]})


def test_report_is_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    out = tmp_path / "report"
    report_files.write_report(out, {"heldout": {"rows": ROWS, "images": []}}, {}, [])
    try:
        report_files.log_to_wandb(out, project="lit-caprl-test")
    finally:
        import wandb

        wandb.teardown()  # stop this process's wandb service, so later tests start clean
        monkeypatch.delenv("WANDB_SERVICE", raising=False)
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1
    assert b"pipeline-report" in next(runs[0].glob("run-*.wandb")).read_bytes()


def test_repetition_counts_sentences_said_again():
    from lit_caprl.evaluate import repetition

    assert repetition("top big red circle . left small blue square . top big red circle .") == pytest.approx(1 / 3)
    assert repetition("top big red circle . left small blue square .") == 0.0
    assert repetition("") == 0.0


def test_rows_of_one_recipe_from_several_seeds_are_summarised_with_their_spread(tmp_path):
    """`NAME@seedK` rows: one line per recipe with mean (min-max) over its seeds, in the
    markdown and in report.json (hand-computed: utilities 0.6 and 0.8 around sft 0.4, gold 0.9)."""
    rows = {
        **ROWS,
        "qa@seed0": {**ROWS["grpo"], "utility": 0.6, "repetition": 0.0},
        "qa@seed1": {**ROWS["grpo"], "utility": 0.8, "repetition": 0.1},
    }
    md = report_files.write_report(tmp_path, {"heldout": {"rows": rows, "images": []}}, {}, [])
    assert "| qa | 2 | 0.700 (0.600-0.800) | 0.850 (0.850-0.850) |" in md
    assert md.split("| qa | 2 |")[1].split("\n")[0].rstrip().endswith("| 60% |")  # mean of 40% and 80%
    seeds = json.loads((tmp_path / "report.json").read_text())["benchmarks"]["heldout"]["seeds"]["qa"]
    assert seeds["utility"] == pytest.approx([0.7, 0.6, 0.8]) and seeds["rows"] == ["qa@seed0", "qa@seed1"]
    assert seeds["best_of_n"] is None  # a column some rows lack has no spread
