"""Every experiment config parses through the CLI, and the CLI runs a config end to end."""

import re
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from lit_caprl.cli import main
from lit_caprl.trainer_cli import CapRLCLI

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted((ROOT / "experiments").rglob("*.yaml"))
CONFIGS = [c for c in ALL if c.parent.name != "overlays" and yaml.safe_load(c.read_text()).get("model")]
TOOL_CONFIGS = [c for c in ALL if c.name.startswith("mine_pairs")]  # `lit-caprl mine-pairs --config`
OVERLAYS = [c for c in ALL if c.parent.name == "overlays"]  # `-c BASE.yaml -c overlays/BASE_what.yaml`


class ParseOnlyCLI(CapRLCLI):
    def before_instantiate_classes(self) -> None:  # type-check every key; model and data paths need not exist
        pass

    def instantiate_classes(self) -> None:  # without loading models
        pass


def test_there_are_configs():
    assert len(CONFIGS) >= 4 and TOOL_CONFIGS
    pipelines = [c for c in ALL if "stages" in yaml.safe_load(c.read_text())]  # `lit-caprl pipeline FILE`
    assert set(ALL) == set(CONFIGS) | set(TOOL_CONFIGS) | set(pipelines) | set(OVERLAYS)  # each kind is parsed


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[c.name for c in OVERLAYS])
def test_overlay_parses_on_its_base(overlay):
    base = overlay.parent.parent / f"{overlay.name.split('_')[0]}.yaml"
    cli = ParseOnlyCLI(args=["-c", str(base), "-c", str(overlay)], run=False)
    assert cli.config.model.init_args.reward.class_path.startswith("lit_caprl.rewards.")


def mine_pairs_parser() -> ArgumentParser:
    from lit_caprl.mining import mine_pairs

    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(mine_pairs)
    return parser


@pytest.mark.parametrize("config", TOOL_CONFIGS, ids=[c.name for c in TOOL_CONFIGS])
def test_mine_pairs_config_parses(config):
    cfg = mine_pairs_parser().parse_args(["--config", str(config)])
    assert cfg.reward.class_path == "lit_caprl.rewards.CapRLQAReward" and cfg.min_margin > 0


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_config_parses(config):
    cli = ParseOnlyCLI(args=["-c", str(config)], run=False)
    assert cli.config.model.class_path.startswith("lit_caprl.")


def test_several_configs_merge_and_interpolate(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "model:\n  init_args:\n    optim:\n      lr: 0.123\n"
        "data:\n  init_args:\n    root: /tmp/shapes-x\n"
        "trainer:\n  default_root_dir: ${data.init_args.root}-out\n"
    )
    base = ROOT / "experiments/shapes/captioner_pretrain.yaml"
    cli = ParseOnlyCLI(args=["-c", str(base), "-c", str(extra)], run=False)
    assert cli.config.model.init_args.optim.lr == 0.123
    assert cli.config.model.init_args.optim.warmup_steps == 30  # kept from the first file
    assert cli.config.trainer.default_root_dir == "/tmp/shapes-x-out"


def test_cli_fit_runs_the_captioner_config(tiny_models, shapes_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "-c",
            str(ROOT / "experiments/shapes/captioner_pretrain.yaml"),
            f"--model.init_args.model={tiny_models['qwen2_5_vl']}",
            f"--data.init_args.root={shapes_root}",
            "--data.init_args.batch_size=4",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
        ]
    )
    export = tmp_path / "runs/shapes/captioner_pretrain/export"
    assert (export / "model.safetensors").is_file()
    assert (tmp_path / "runs/shapes/captioner_pretrain/lightning_logs").is_dir()


def test_every_command_the_readme_tours_is_in_help_and_answers_help(capsys):
    """A newcomer finds each command the README's table names in `lit-caprl --help`, and each
    tool answers `--help` (a renamed or unregistered tool fails here)."""
    readme = (ROOT / "README.md").read_text()
    toured = re.findall(r"^\| `([a-z-]+)[ `]", readme, flags=re.MULTILINE)
    assert {"fit", "pipeline", "caption", "eval", "curate"} <= set(toured)
    main(["--help"])
    listed = set(re.findall(r"^  ([a-z-]+) ", capsys.readouterr().out, flags=re.MULTILINE))
    assert set(toured) <= listed, set(toured) - listed
    for command in set(toured) - {"fit", "validate"}:  # LightningCLI's own --help is Lightning's
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0, command
        assert f"lit-caprl {command}" in capsys.readouterr().out, command
