"""W&B sweeps: files load, every parameter is a valid CLI override, and the command an agent
builds runs offline, logs the sweep metric and leaves a run directory with the sample table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_configs import ParseOnlyCLI

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict) -> list[str]:
    """The argv a W&B agent runs: macros expanded, `${args}` as `--key=value` for one sampled point."""
    args = []
    for key, spec in sweep["parameters"].items():
        value = spec["value"] if "value" in spec else spec["values"][0] if "values" in spec else spec["min"]
        args.append(f"--{key}={value}")
    out = []
    for part in sweep["command"]:
        out += {
            "${env}": [],
            "${interpreter}": [sys.executable],
            "${program}": [sweep["program"]],
            "${args}": args,
        }.get(part, [part])
    return out


def test_there_are_grpo_and_sft_sweeps():
    assert {p.name for p in SWEEPS} >= {"grpo.yaml", "sft.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_parameter_is_a_cli_override(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load(path.read_text())
    assert {"metric", "parameters", "command"} <= set(sweep) and "${args}" in sweep["command"]
    argv = agent_command(sweep)
    cli = ParseOnlyCLI(args=argv[argv.index("fit") + 1 :], run=False)
    for key in sweep["parameters"]:
        node = cli.config
        for part in key.split("."):
            node = node[part]
        assert node is not None, key


@pytest.mark.parametrize("name", ["grpo", "sft"])
def test_agent_command_runs_offline_and_logs_metric_and_samples(name, tiny_models, shapes_root, tmp_path):
    sweep = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())
    argv = agent_command(sweep)
    argv = [a.replace("experiments/", f"{ROOT}/experiments/") for a in argv]
    # Only redirections to the tiny models and data and a 2-step budget are added to the agent's line.
    argv += [f"--data.init_args.root={shapes_root}", "--trainer.max_steps=2", "--trainer.enable_progress_bar=false"]
    policy = tiny_models["qwen2_5_vl"]
    argv.append(f"--model.init_args.model={policy}")
    if name == "grpo":
        reader = f"--model.init_args.reward.init_args.terms.qa.init_args.reader={tiny_models['qwen2']}"
        argv += [
            f"--model.init_args.init_from={policy}",
            reader,
            "--model.init_args.max_new_tokens=8",
            "--data.init_args.batch_size=2",
            "--trainer.max_epochs=1",
        ]
    else:
        argv += ["--data.init_args.batch_size=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no service of this process
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # offline runs keep their history in this log
    assert sweep["metric"]["name"].encode() in log
    if name == "grpo":
        tables = list(runs[0].rglob("samples_*.table.json"))
        assert tables, "no sample table in the offline run"
        columns = json.loads(tables[0].read_text())["columns"]
        assert columns[:3] == ["image", "caption", "reward"] and {"qa", "length", "advantage", "tokens"} <= set(columns)
