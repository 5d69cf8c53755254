"""A user's mistakes get one clear line naming what to fix, and exit code 2, never a traceback,
a wrong model or lost progress. Each runs the real command in a fresh process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lit_caprl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_CAPRL_DEBUG", "LOCAL_RANK", "MASTER_"))}
    return subprocess.run(
        [sys.executable, "-m", "lit_caprl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error line; fails unless the command exited 2 with exactly one `lit-caprl: error:` line and no traceback."""
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("lit-caprl: error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def sft_args(tiny_models, shapes_root):
    return [
        "fit",
        "-c",
        str(ROOT / "experiments/shapes/captioner_pretrain.yaml"),
        f"--model.init_args.model={tiny_models['qwen2_5_vl']}",
        f"--data.init_args.root={shapes_root}",
        "--data.init_args.batch_size=4",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="module")
def grpo_args(tiny_models, shapes_root):
    return [
        "fit",
        "-c",
        str(ROOT / "experiments/shapes/grpo.yaml"),
        f"--model.init_args.model={tiny_models['qwen2_5_vl']}",
        f"--model.init_args.init_from={tiny_models['qwen2_5_vl']}",
        f"--data.init_args.root={shapes_root}",
        f"--model.init_args.reward.init_args.reader={tiny_models['qwen2']}",
        "--trainer.logger=false",
    ]


def test_help_lists_every_command_without_loading_torch():
    done = lit_caprl("--help")
    assert done.returncode == 0
    for command in (
        "fit",
        "validate",
        "pipeline",
        "data",
        "make-tiny",
        "caption",
        "eval",
        "report",
        "mine-pairs",
        "curate",
    ):
        assert f"\n  {command} " in done.stdout, command
    assert "predict" not in done.stdout


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--model.init_args.init_from={reader}"],
            "model.init_args.init_from: {reader} is a qwen2 (text-only) model "
            "but model {policy} is a qwen2_5_vl (vision-language) one",
        ),
        (
            ["--model.init_args.init_from=runs/nope/export"],
            "model.init_args.init_from: runs/nope/export is neither an export directory",
        ),
        (["--model.init_args.optim.lr=-0.001"], "model.init_args.optim.lr must be > 0, got -0.001"),
        (["--model.init_args.optim.vision_lr=-1"], "model.init_args.optim.vision_lr must be >= 0"),
        (["--model.init_args.optim.lrr=0.1"], "model.init_args.optim.lrr: Optim has no option 'lrr'; did you mean"),
        (
            ["--model.init_args.lr=0.1"],
            "model.init_args.lr: optimizer settings live under optim: write model.init_args.optim.lr",
        ),
        (["--data.init_args.root=runs/data/shapez"], "data.init_args.root: runs/data/shapez holds no ShapesWorld data"),
        (["--data.init_args.batch_size=0"], "data.init_args.batch_size must be >= 1, got 0"),
        (["--model.init_args.modle=x"], "model.init_args.modle: SFTStage has no option 'modle'; did you mean 'model'"),
        (
            ["--model.init_args.model=runs/models/nope"],
            "model.init_args.model: model directory 'runs/models/nope' does not exist",
        ),
        (["--ckpt_path=last", "--trainer.default_root_dir={tmp}"], "ckpt_path=last: no last.ckpt under {tmp}"),
    ],
)
def test_sft_config_mistakes(sft_args, tiny_models, tmp_path, extra, expected):
    fill = {"reader": tiny_models["qwen2"], "policy": tiny_models["qwen2_5_vl"], "tmp": str(tmp_path)}
    line = one_line_error(lit_caprl(*sft_args, *[e.format(**fill) for e in extra]))
    assert expected.format(**fill) in line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.init_args.num_generations=1"], "model.init_args.num_generations must be >= 2"),
        (["--model.init_args.init_from={reader}"], "is a qwen2 (text-only) model but model"),
        (
            ["--model.init_args.model={reader}", "--model.init_args.init_from=null"],
            "the GRPOStage policy must be a vision-language captioner, but {reader} is qwen2 (text-only)",
        ),
        (
            ["--model.init_args.reward.init_args.reader={policy}"],
            "model.init_args.reward.init_args.reader: the reader must be a text-only LLM",
        ),
    ],
)
def test_grpo_config_mistakes(grpo_args, tiny_models, extra, expected):
    fill = {"reader": tiny_models["qwen2"], "policy": tiny_models["qwen2_5_vl"]}
    line = one_line_error(lit_caprl(*grpo_args, *[e.format(**fill) for e in extra]))
    assert expected.format(**fill) in line


def test_tool_mistakes(tmp_path, shapes_root):
    assert "pipeline file nope.yaml does not exist" in one_line_error(lit_caprl("pipeline", "nope.yaml"))
    (tmp_path / "empty.jsonl").write_text("")
    done = lit_caprl("data", "check", str(tmp_path / "empty.jsonl"))
    assert done.returncode == 1 and f"{tmp_path / 'empty.jsonl'}:0: file: is empty" in done.stdout
    assert "no .parquet, .json or .jsonl input at typo.parquet" in one_line_error(
        lit_caprl("data", "import", "--format", "caprl-qa", "--in", "typo.parquet", "--out", str(tmp_path / "o"))
    )
    no_images = lit_caprl("caption", "--model", "m", "--in", str(tmp_path), "--out", str(tmp_path / "c.jsonl"))
    assert "no images" in one_line_error(no_images)
    assert "unknown command 'predict'; the commands are fit, validate, make-tiny" in one_line_error(
        lit_caprl("predict", "-c", "experiments/shapes/grpo.yaml")
    )
    assert "give at least one --benchmark" in one_line_error(lit_caprl("eval", "--reader", "r", "--out", "o"))


def test_a_bad_data_line_is_named_and_on_bad_record_skip_keeps_going(tmp_path, shapes_root):
    from lit_caprl.data import PromptData
    from lit_caprl.data.schema import DataError

    lines = (Path(shapes_root) / "train.jsonl").read_bytes().splitlines(keepends=True)[:4]
    (tmp_path / "images").mkdir()
    for i in range(4):
        shutil.copy(Path(shapes_root) / f"images/{i:06d}.png", tmp_path / "images")
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b"".join(lines[:2]) + b'{"id": "x\xff"}\n' + b"".join(lines[2:]))
    with pytest.raises(DataError, match=rf"{bad}:3: record: not UTF-8"):
        PromptData(str(bad)).setup()
    data = PromptData(str(bad), on_bad_record="skip")
    data.setup()
    assert len(data.train_set) == 4 and data.skipped == [f"{bad}:3: record: not UTF-8 (byte 9 of the line)"]


def test_resume_with_the_readme_command(sft_args, tmp_path):
    """README: `--ckpt_path last` resumes the run where it stopped (Lightning alone restarted it
    from step 0 in a new version directory)."""
    common = [
        *sft_args,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
    ]
    first = lit_caprl(*common, "--trainer.max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    again = lit_caprl(*common, "--trainer.max_steps=5", "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {tmp_path}/lightning_logs/version_0/checkpoints/last.ckpt" in again.stdout
    rows = (tmp_path / "lightning_logs/version_1/metrics.csv").read_text().splitlines()
    steps = sorted(
        {int(r["step"]) for r in map(lambda ln: dict(zip(rows[0].split(","), ln.split(","), strict=True)), rows[1:])}
    )
    assert steps == [3, 4], steps  # only the two steps it had left
    record = json.loads((tmp_path / "export" / "lit_caprl.json").read_text())
    assert record["training"]["steps"] == 5


def test_a_failed_fit_leaves_no_empty_run_dir(sft_args, shapes_root, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"id": "a", "image": "nope.png", "captions": ["x"]}\n')
    args = [a for a in sft_args if not a.startswith("--trainer.logger")]
    done = lit_caprl(
        *args,
        "--data=lit_caprl.data.CaptionData",
        f"--data.init_args.train_file={bad}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert f"{bad}:1: image: image file" in one_line_error(done)
    assert "(data.init_args.on_bad_record: skip trains without such records" in done.stderr
    assert not (tmp_path / "lightning_logs").exists() or not list((tmp_path / "lightning_logs").iterdir())


def test_temp_dirs_of_killed_writers_are_cleaned_at_the_next_start(tmp_path):
    from lit_caprl.io import atomic_dir

    dead = tmp_path / ".pairs.tmp-999999999"  # no such process
    alive = tmp_path / f".pairs.tmp-{os.getppid()}"  # a running writer's: left alone
    dead.mkdir()
    alive.mkdir()
    with atomic_dir(tmp_path / "pairs") as tmp:
        (tmp / "pairs.jsonl").write_text("")
    assert not dead.exists() and alive.exists() and (tmp_path / "pairs" / "pairs.jsonl").exists()
