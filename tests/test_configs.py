"""Every experiment config parses through the CLI, and the CLI runs a config end to end."""

from pathlib import Path

import pytest

from lit_caprl.cli import CapRLCLI, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").rglob("*.yaml"))


class ParseOnlyCLI(CapRLCLI):
    def instantiate_classes(self) -> None:  # type-check every key without loading models
        pass


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_config_parses(config):
    cli = ParseOnlyCLI(args=["-c", str(config)], run=False)
    assert cli.config.model.class_path.startswith("lit_caprl.")


def test_several_configs_merge_and_interpolate(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "model:\n  init_args:\n    lr: 0.123\n"
        "data:\n  init_args:\n    root: /tmp/shapes-x\n"
        "trainer:\n  default_root_dir: ${data.init_args.root}-out\n"
    )
    cli = ParseOnlyCLI(args=["-c", str(ROOT / "experiments/shapes/captioner_sft.yaml"), "-c", str(extra)], run=False)
    assert cli.config.model.init_args.lr == 0.123
    assert cli.config.model.init_args.warmup_steps == 30  # kept from the first file
    assert cli.config.trainer.default_root_dir == "/tmp/shapes-x-out"


def test_cli_fit_runs_the_captioner_config(tiny_models, shapes_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "-c", str(ROOT / "experiments/shapes/captioner_sft.yaml"),
        f"--model.init_args.model={tiny_models['qwen2_5_vl']}", f"--data.init_args.root={shapes_root}",
        "--data.init_args.batch_size=4", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
    ])  # fmt: skip
    export = tmp_path / "runs/shapes/captioner_sft/export"
    assert (export / "model.safetensors").is_file()
    assert (tmp_path / "runs/shapes/captioner_sft/lightning_logs").is_dir()
