"""`lit-caprl pipeline FILE`: run stages in order under one run directory, checkpoint to checkpoint.

A pipeline file:

    run_dir: runs/pipeline
    stages:
      - name: captioner_sft
        fit: experiments/shapes/captioner_sft.yaml   # a `lit-caprl fit` config ...
        init_from: null                               # start fresh (default: the previous fit stage)
        overrides: {data.init_args.root: "{data}"}    # `--key=value` after the config
      - name: pairs
        command: [mine-pairs, --policy, "{captioner_sft}", --out, "{out}"]   # ... or any lit-caprl tool

In strings, `{run}` is the run directory, `{out}` the stage's own output and `{NAME}` the
output of an earlier stage NAME: a fit stage's output is its `save_pretrained` export
(`{run}/NAME/export`), a command's is the directory `{run}/NAME`, which the command must
write atomically. A stage whose output exists is done and skipped, so rerunning continues
where the last run stopped; `--force NAME` redoes NAME and every stage after it. Wall times
go to `{run}/stages.json`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

_PREVIOUS = object()  # `init_from` absent: the previous fit stage


@dataclass
class Stage:
    name: str
    fit: str | None = None
    command: list[str] = field(default_factory=list)
    overrides: dict[str, object] = field(default_factory=dict)
    init_from: object = _PREVIOUS

    def output(self, run: Path) -> Path:
        return run / self.name / "export" if self.fit else run / self.name


def load_pipeline(path: str | Path) -> tuple[Path, list[Stage]]:
    """Parse and check a pipeline file: unique names, exactly one of fit/command per stage,
    `init_from` naming an earlier fit stage."""
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict) or "run_dir" not in cfg or not cfg.get("stages"):
        raise ValueError(f"{path}: needs `run_dir` and a non-empty `stages` list")
    stages: list[Stage] = []
    for i, raw in enumerate(cfg["stages"]):
        where = f"{path}: stages[{i}]"
        unknown = set(raw) - {"name", "fit", "command", "overrides", "init_from"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if "name" not in raw or any(s.name == raw["name"] for s in stages):
            raise ValueError(f"{where}: every stage needs a unique `name`")
        if bool(raw.get("fit")) == bool(raw.get("command")):
            raise ValueError(f"{where} ({raw['name']}): give exactly one of `fit` (a config) or `command`")
        stage = Stage(**raw)
        if stage.init_from is not _PREVIOUS and stage.init_from is not None:
            if not any(s.name == stage.init_from and s.fit for s in stages):
                raise ValueError(f"{where} ({stage.name}): init_from {stage.init_from!r} is not an earlier fit stage")
        stages.append(stage)
    return Path(cfg["run_dir"]), stages


def stage_args(stage: Stage, stages: list[Stage], run: Path) -> list[str]:
    """The `lit-caprl` argument list of one stage, with placeholders filled in."""
    names = {s.name: str(s.output(run)) for s in stages}
    ctx = {**names, "run": str(run), "out": str(stage.output(run))}
    fill = lambda v: str(v).format_map(ctx)  # noqa: E731
    if stage.command:
        return [fill(a) for a in stage.command]
    args = ["fit", "-c", stage.fit, f"--trainer.default_root_dir={run / stage.name}"]
    logger = (OmegaConf.to_container(OmegaConf.load(stage.fit)).get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
        args.append(f"--trainer.logger.init_args.save_dir={run / stage.name}")  # logs beside the export
    source = stage.init_from
    if source is _PREVIOUS:
        earlier = [s for s in stages[: stages.index(stage)] if s.fit]
        source = earlier[-1].name if earlier else None
    if source is not None:
        args.append(f"--model.init_args.init_from={names[source]}")
    args += [f"--{k}={fill(v)}" for k, v in stage.overrides.items()]
    return args


def run_in_subprocess(args: list[str]) -> None:
    """Each stage in a fresh process: its memory is returned, and a crash stops the pipeline."""
    subprocess.run([sys.executable, "-m", "lit_caprl.cli", *args], check=True)


def run_pipeline(
    path: str | Path, force: str | None = None, runner: Callable[[list[str]], None] = run_in_subprocess
) -> Path:
    run, stages = load_pipeline(path)
    names = [s.name for s in stages]
    if force is not None and force not in names:
        raise ValueError(f"--force {force!r}: no such stage; stages are {names}")
    run.mkdir(parents=True, exist_ok=True)
    timings_file = run / "stages.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    redo = set(names[names.index(force) :]) if force else set()
    for stage in stages:
        out = stage.output(run)
        if stage.name in redo and out.exists():
            shutil.rmtree(out)
        if out.exists():
            print(f"== {stage.name}: done ({out}), skipped", flush=True)
            continue
        args = stage_args(stage, stages, run)
        print(f"== {stage.name}: lit-caprl {' '.join(args)}", flush=True)
        start = time.perf_counter()
        runner(args)
        if not out.exists():
            raise RuntimeError(f"stage {stage.name} finished without writing its output {out}")
        timings[stage.name] = {"wall_s": round(time.perf_counter() - start, 1)}
        tmp = timings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(timings, indent=2))
        tmp.replace(timings_file)
        print(f"== {stage.name}: {timings[stage.name]['wall_s']} s", flush=True)
    return run
