"""`experiments/shapes/comparisons.yaml` runs end to end in a tiny mode (2 rollout steps per
row on tiny models and 64 scenes), so the comparison cannot rot: every row's reward builds and
trains, the main job's stages are reused, and the report summarises each recipe over its seeds."""

import json
from pathlib import Path

from omegaconf import OmegaConf

from lit_caprl.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_comparisons_run_in_tiny_mode(tiny_models, shapes_root, tmp_path, monkeypatch):
    main = tmp_path / "main"  # stands in for the main job's run: tiny untrained models as its exports
    for stage, source in {
        "data": shapes_root,
        "reader_model": tiny_models["qwen2"],
        "policy_model": tiny_models["qwen2_5_vl"],
        "reader_sft/export": tiny_models["qwen2"],
        "captioner_pretrain/export": tiny_models["qwen2_5_vl"],
        "captioner_sft/export": tiny_models["qwen2_5_vl"],
    }.items():
        (main / stage).parent.mkdir(parents=True, exist_ok=True)
        (main / stage).symlink_to(source)
    cfg = OmegaConf.load(ROOT / "experiments/shapes/comparisons.yaml")
    cfg.run_dir, cfg.reuse["from"] = str(tmp_path / "cmp"), str(main)
    rows = []
    for stage in cfg.stages:
        trained = ("judge_rm", "clip", "vqa_judge", "reader_leaky")
        if stage.name in trained:
            stage.overrides = {**stage.overrides, "trainer.max_steps": 2, "data.init_args.batch_size": 4}
        elif stage.name == "data_leaky":
            stage.command = [str(a) for a in stage.command]
            stage.command[stage.command.index("--n") + 1] = "64"
            stage.command[stage.command.index("--n-val") + 1] = "16"
        elif stage.name == "curated":  # untrained judges keep nothing at CapRL's thresholds: keep all
            stage.command = [*stage.command, "--tau-v", "-1", "--tau-b", "2"]
        elif "fit" in stage and stage.name not in ("reader_sft", "captioner_pretrain", "captioner_sft", *trained):
            rows.append(stage.name)
            tiny = {
                "model.init_args.max_rollout_steps": 2,
                "model.init_args.max_new_tokens": 12,
                "data.init_args.batch_size": 4,
            }
            stage.overrides = {**stage.overrides, **tiny}
        if stage.name == "report":
            stage.command = [str(a) for a in stage.command]
            stage.command[stage.command.index("--n") + 1] = "4"
    f = tmp_path / "comparisons.yaml"
    OmegaConf.save(cfg, f)
    monkeypatch.chdir(ROOT)  # the configs' paths are relative to the checkout

    run = run_pipeline(f)

    stages = json.loads((run / "stages.json").read_text())
    assert {name: stages[name]["rollout_steps"] for name in rows} == dict.fromkeys(rows, 2)
    assert (run / "captioner_sft").is_symlink()  # reused, not retrained
    table = json.loads((run / "report" / "report.json").read_text())["benchmarks"]["heldout"]
    assert set(table["seeds"]) == {
        "qa",
        "qa-sample1",
        "qa-sample2",
        "qa-sample4",
        "qa-sample8",
        "rouge-l",
        "rouge-short",
        "judge",
        "clip",
        "qa+clip",
        "leaky",
        "curated",
    }
    assert all(len(group["rows"]) == 2 for group in table["seeds"].values())
    assert "across seeds: mean (min-max)" in (run / "report" / "report.md").read_text()
