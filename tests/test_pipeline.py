"""Pipeline files: every stage parses; finished stages are skipped; --force redoes a stage and the rest."""

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_configs import ParseOnlyCLI, mine_pairs_parser

from lit_caprl.pipeline import run_pipeline
from lit_caprl.pipeline_file import load_pipeline, stage_args

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = [p for p in sorted((ROOT / "experiments").rglob("*.yaml")) if "stages" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_stage_of_every_pipeline_parses(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run, stages, _ = load_pipeline(path)
    for stage in stages:
        args = stage_args(stage, stages, run)
        assert not any("{" in a for a in args), (stage.name, args)  # every placeholder was filled
        if stage.fit:
            cli = ParseOnlyCLI(args=args[1:], run=False)
            assert cli.config.trainer.default_root_dir == str(run / stage.name)
        elif args[0] == "mine-pairs":
            mine_pairs_parser().parse_args(args[1:])
        if args[0] in ("mine-pairs", "make-tiny"):  # `--seed N` runs everything from seed N, sampling too
            seeded = stage_args(stage, stages, run, seed=7)
            assert "--seed" in seeded and seeded[seeded.index("--seed") + 1] == "7", stage.name


def _pipeline(tmp_path: Path) -> Path:
    sft, rl = tmp_path / "sft.yaml", tmp_path / "rl.yaml"
    sft.write_text("trainer:\n  logger:\n    class_path: CSVLogger\n    init_args: {save_dir: x}\n")
    rl.write_text("trainer:\n  logger: false\n")
    f = tmp_path / "p.yaml"
    f.write_text(f"""
run_dir: {tmp_path / "run"}
stages:
  - {{name: data, command: [data, shapes, --out, "{{out}}"]}}
  - {{name: sft, fit: {sft}, init_from: null, overrides: {{data.init_args.root: "{{data}}"}}}}
  - {{name: rl, fit: {rl}}}
  - {{name: rl2, fit: {rl}, init_from: sft}}
""")
    return f


class FakeRunner:
    """Records the stages it runs and writes the output a real stage would."""

    def __init__(self, run: Path) -> None:
        self.run, self.calls, self.threads = run, [], {}

    def __call__(self, args: list[str], threads: int | None = None, log: Path | None = None) -> None:
        self.calls.append(args)
        if args[0] == "fit":
            out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--trainer.default_root_dir=")))
            (out / "export").mkdir(parents=True)
        else:
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
        self.threads[out.name] = threads, log


def test_stages_chain_skip_and_force(tmp_path):
    f = _pipeline(tmp_path)
    run = tmp_path / "run"
    first = FakeRunner(run)
    run_pipeline(f, runner=first)
    assert [c[0] for c in first.calls] == ["data", "fit", "fit", "fit"]
    sft, rl, rl2 = first.calls[1:]
    assert f"--data.init_args.root={run / 'data'}" in sft
    assert not any(a.startswith("--model.init_args.init_from") for a in sft)  # init_from: null
    assert f"--trainer.logger.init_args.save_dir={run / 'sft'}" in sft  # logs go beside the export ...
    assert not any(a.startswith("--trainer.logger") for a in rl)  # ... when the config has a logger
    assert f"--model.init_args.init_from={run / 'sft/export'}" in rl  # default: the previous fit stage
    assert f"--model.init_args.init_from={run / 'sft/export'}" in rl2  # named
    assert set((run / "stages.json").read_text().split('"')) >= {"data", "sft", "rl", "rl2"}

    again = FakeRunner(run)
    run_pipeline(f, runner=again)
    assert again.calls == []  # everything done: nothing reruns

    forced = FakeRunner(run)
    run_pipeline(f, force="rl", runner=forced)
    assert [Path(c[2]).name for c in forced.calls] == ["rl.yaml", "rl.yaml"]  # rl and everything after it


def test_a_half_finished_run_continues_where_it_stopped(tmp_path):
    f = _pipeline(tmp_path)
    run = tmp_path / "run"

    def dies_in_rl(args, threads=None, log=None):
        if str(tmp_path / "rl.yaml") in args:
            raise RuntimeError("killed")
        FakeRunner(run)(args)

    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(f, runner=dies_in_rl)
    resumed = FakeRunner(run)
    run_pipeline(f, runner=resumed)
    assert [Path(c[2]).name for c in resumed.calls] == ["rl.yaml", "rl.yaml"]


def test_a_stage_that_exits_cleanly_without_its_output_stops_the_run(tmp_path):
    f = _pipeline(tmp_path)
    run = tmp_path / "run"
    calls = []

    def sft_writes_logs_only(args, threads=None, log=None):
        calls.append(args)
        if str(tmp_path / "sft.yaml") in args:
            (run / "sft").mkdir(parents=True)  # its logs, but no export
        else:
            FakeRunner(run)(args)

    with pytest.raises(RuntimeError, match=f"stage sft finished without writing its output {run / 'sft' / 'export'}$"):
        run_pipeline(f, runner=sft_writes_logs_only)
    assert len(calls) == 2  # data, sft; the stages that read sft never started


def test_bad_pipeline_files_are_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run_dir: r\nstages:\n  - {name: a, fit: x.yaml, init_from: b}\n")
    with pytest.raises(ValueError, match=r"stages\[0\] \(a\): init_from 'b' is not an earlier fit stage"):
        load_pipeline(f)
    f.write_text("run_dir: r\nstages:\n  - {name: a, fit: x.yaml, command: [eval]}\n")
    with pytest.raises(ValueError, match="exactly one of"):
        load_pipeline(f)
    with pytest.raises(ValueError, match="no such stage"):
        run_pipeline(_pipeline(tmp_path), force="nope", runner=FakeRunner(tmp_path))


def _side_by_side(tmp_path: Path) -> Path:
    sft = tmp_path / "sft.yaml"
    sft.write_text("trainer:\n  logger: false\n")
    f = tmp_path / "p.yaml"
    f.write_text(f"""
run_dir: {tmp_path / "run"}
stages:
  - {{name: data, command: [data, shapes, --out, "{{out}}"]}}
  - {{name: reader, fit: {sft}, init_from: null, overrides: {{data.init_args.root: "{{data}}"}}}}
  - {{name: pretrain, fit: {sft}, init_from: null, with_previous: true, overrides: {{data.root: "{{data}}"}}}}
  - {{name: captioner, fit: {sft}, with_previous: true, overrides: {{data.root: "{{data}}"}}}}
  - {{name: rl, fit: {sft}, init_from: captioner, overrides: {{reward: "{{reader}}"}}}}
""")
    return f


def test_stages_side_by_side_run_at_once_on_shared_cores(tmp_path, monkeypatch):
    """reader beside the lane pretrain -> captioner (captioner starts from pretrain, the previous
    fit stage): the lanes overlap, the lane's stages run in order, each lane on half the cores."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    run = tmp_path / "run"
    together = threading.Barrier(2, timeout=10)  # breaks unless the reader and pretrain overlap
    fake = FakeRunner(run)

    def runner(args, threads=None, log=None):
        if threads and "captioner" not in str(args):
            together.wait()
        if "captioner" in str(args):
            assert (run / "pretrain/export").exists()  # after the stage it starts from
        fake(args, threads, log)

    run_pipeline(_side_by_side(tmp_path), runner=runner)
    for name in ("reader", "pretrain", "captioner"):
        assert fake.threads[name] == (2, run / f"logs/{name}.log")
    (captioner,) = [c for c in fake.calls if f"--trainer.default_root_dir={run / 'captioner'}" in c]
    assert f"--model.init_args.init_from={run / 'pretrain/export'}" in captioner
    assert fake.threads["data"] == fake.threads["rl"] == (None, None)  # alone: every core, the console
    assert set(json.loads((run / "stages.json").read_text())) == {"data", "reader", "pretrain", "captioner", "rl"}


def test_a_failure_beside_another_stage_keeps_the_other(tmp_path):
    run = tmp_path / "run"

    def reader_dies(args, threads=None, log=None):
        if f"--trainer.default_root_dir={run / 'reader'}" in args:
            raise RuntimeError("reader killed")
        FakeRunner(run)(args)

    with pytest.raises(RuntimeError, match="reader killed"):
        run_pipeline(_side_by_side(tmp_path), runner=reader_dies)
    assert (run / "captioner/export").exists() and "captioner" in json.loads((run / "stages.json").read_text())
    resumed = FakeRunner(run)
    run_pipeline(_side_by_side(tmp_path), runner=resumed)
    assert list(resumed.threads) == ["reader", "rl"]  # the captioner's lane is done; the reader runs alone


def test_a_stage_follows_one_lane_of_its_group_not_two(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run_dir: r\nstages:\n  - {name: a, fit: x.yaml, with_previous: true}\n")
    with pytest.raises(ValueError, match="first stage has no previous stage"):
        load_pipeline(f)
    f.write_text(
        "run_dir: r\nstages:\n  - {name: a, command: [x]}\n  - {name: b, command: [y], with_previous: true}\n"
        "  - {name: c, command: [z, '{a}', '{b}'], with_previous: true}\n"
    )
    with pytest.raises(ValueError, match=r"\(c\): reads \['a', 'b'\], which run side by side"):
        load_pipeline(f)


def test_seed_progress_lines_and_a_time_limited_stage_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("lit_caprl.pipeline.PROGRESS_EVERY_S", 0.2)
    fake = FakeRunner(tmp_path / "run-seed3")

    def runner(args, threads=None, log=None):
        fake(args, threads, log)
        if args[0] == "fit":
            root = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--trainer.default_root_dir=")))
            assert "--seed_everything=3" in args and "--trainer.callbacks+=lit_caprl.callbacks.ProgressFile" in args
            progress = {
                "step": 3100,
                "total": 7000,
                "unit": "steps",
                "metric": "train/loss",
                "value": 0.41234,
                "elapsed_s": 10.0,
                "eta_s": 250.0,
            }
            (root / "progress.json").write_text(json.dumps(progress))
            training = {
                "steps": 3100,
                "max_steps": 7000,
                "stopped_by": "time_limit" if root.name == "reader" else "steps",
            }
            (root / "export" / "lit_caprl.json").write_text(json.dumps({"training": training}))
            if threads:
                time.sleep(0.5)  # long enough for a progress line

    run = run_pipeline(_side_by_side(tmp_path), runner=runner, seed=3)
    assert run == tmp_path / "run-seed3"
    stages = json.loads((run / "stages.json").read_text())
    assert stages["reader"]["stopped_by"] == "time_limit" and stages["rl"]["steps"] == 3100
    out = capsys.readouterr().out
    assert "WARNING: reader was stopped by its time limit (max_time) after 3,100 of 7,000 steps" in out
    assert "   captioner          3,100/7,000 steps  train/loss 0.412  ETA 4:10" in out


def test_reuse_links_the_main_jobs_stages_and_merges_overlays(tmp_path):
    """A comparison pipeline starts from the main job's finished stages (linked, not rerun, and
    never deleted by --force), trains what the main job lacks, and a stage's overlay configs
    come after its base config, in order."""
    main_file = _pipeline(tmp_path)
    main_run = tmp_path / "run"
    run_pipeline(main_file, runner=FakeRunner(main_run))
    (main_run / "sft" / "export" / "weights").write_text("trained once")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  logger:\n    class_path: CSVLogger\n    init_args: {save_dir: y}\n")
    f = tmp_path / "cmp.yaml"
    f.write_text(f"""
run_dir: {tmp_path / "cmp"}
reuse: {{from: {main_run}, stages: [data, sft, extra]}}
stages:
  - {{name: data, command: [data, shapes, --out, "{{out}}"]}}
  - {{name: sft, fit: {tmp_path / "sft.yaml"}, init_from: null, overrides: {{data.init_args.root: "{{data}}"}}}}
  - {{name: extra, command: [data, shapes, --out, "{{out}}"]}}
  - {{name: rl2, fit: [{tmp_path / "rl.yaml"}, {overlay}], init_from: sft}}
""")
    cmp = tmp_path / "cmp"
    runner = FakeRunner(cmp)
    run_pipeline(f, runner=runner)
    assert [c[0] for c in runner.calls] == ["data", "fit"]  # `extra`: not in the main job; `rl2`: in it, not listed
    assert (cmp / "sft").is_symlink() and (cmp / "sft/export/weights").read_text() == "trained once"
    rl2 = runner.calls[1]
    assert rl2[1:5] == ["-c", str(tmp_path / "rl.yaml"), "-c", str(overlay)]
    assert f"--model.init_args.init_from={cmp / 'sft/export'}" in rl2
    assert f"--trainer.logger.init_args.save_dir={cmp / 'rl2'}" in rl2  # the overlay's logger counts

    forced = FakeRunner(cmp)
    run_pipeline(f, force="sft", runner=forced)
    assert [c[0] for c in forced.calls] == ["fit", "data", "fit"]  # sft redone here, then what follows
    assert not (cmp / "sft").is_symlink()
    assert (main_run / "sft" / "export" / "weights").read_text() == "trained once"  # the main job's files stay
