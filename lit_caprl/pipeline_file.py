"""A pipeline file (`lit-caprl pipeline FILE`): its stages, the lanes they run in, and each
stage's `lit-caprl` arguments. Running them is `pipeline.py`.

The format:

    run_dir: runs/pipeline
    stages:
      - name: captioner_sft
        fit: experiments/shapes/captioner_sft.yaml   # a `lit-caprl fit` config ...
        init_from: null                               # start fresh (default: the previous fit stage)
        overrides: {data.init_args.root: "{data}"}    # `--key=value` after the config
      - name: pairs
        command: [mine-pairs, --policy, "{captioner_sft}", --out, "{out}"]   # ... or any lit-caprl tool
      - name: reader_sft
        fit: experiments/shapes/reader_sft.yaml
        init_from: null
        with_previous: true   # runs at the same time as the stage above
      - name: grpo_rouge
        fit: [experiments/shapes/grpo.yaml, experiments/shapes/overlays/grpo_rouge.yaml]  # merged in order

In strings, `{run}` is the run directory, `{out}` the stage's own output, `{seed}` the run's
seed (`--seed`, default 0; fit stages also get it as `seed_everything`, and a run with
`--seed N` goes to `{run_dir}-seedN`) and `{NAME}` the output of an earlier stage NAME: a
fit stage's output is its `save_pretrained` export (`{run}/NAME/export`), a command's is the
directory `{run}/NAME`, which the command must write atomically. A stage whose output exists
is done and skipped, so rerunning continues where the last run stopped; `--force NAME` redoes
NAME and every stage after it. Wall times go to `{run}/stages.json`, with how far each fit
stage trained and what stopped it: a stage that its `max_time` safety net cut short is
reported loudly, here and in the report.

A stage with `with_previous` joins the group of the stage above; a group's stages run side by
side, except that a stage reading another stage of its group runs after it, in its lane (a
captioner's two SFT stages one after the other, beside the reader's). Lanes share the
machine's cores evenly (`OMP_NUM_THREADS`) and write their output to `{run}/logs/NAME.log`:
tiny models gain little from a second thread, so two trainings at one thread each take about
as long as one of them at two. Meanwhile the console shows one progress line per running
stage (from its `progress.json`, see `ProgressFile`). If one lane fails, the pipeline stops
once the others have finished, keeping what they wrote.

`reuse: {from: DIR, stages: [NAME, ...]}` takes those stages' outputs from DIR (e.g. the main
job's `runs/pipeline`; DIR-seedN with `--seed N`), linked, when this run lacks them and DIR
has them: a pipeline that compares variants of one stage starts from the main job's stages
without retraining them, and trains them itself where the main job never ran. Only the
stages named are reused: another stage of the same name (a report) may do something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf

from lit_caprl.errors import ConfigError, MissingPath

_PREVIOUS = object()  # `init_from` absent: the previous fit stage


@dataclass
class Stage:
    name: str
    fit: str | list[str] | None = None  # one config, or several merged in order
    command: list[str] = field(default_factory=list)
    overrides: dict[str, object] = field(default_factory=dict)
    init_from: object = _PREVIOUS
    with_previous: bool = False

    def output(self, run: Path) -> Path:
        return run / self.name / "export" if self.fit else run / self.name

    @property
    def configs(self) -> list[str]:
        return [self.fit] if isinstance(self.fit, str) else list(self.fit or [])


class Reuse(NamedTuple):
    source: Path
    stages: frozenset[str]


class Pipeline(NamedTuple):
    run: Path
    stages: list[Stage]
    reuse: Reuse | None = None


def load_pipeline(path: str | Path) -> Pipeline:
    """Parse and check a pipeline file: unique names, exactly one of fit/command per stage,
    `init_from` naming an earlier fit stage, no stage fed by two lanes of its group."""
    if not Path(path).is_file():
        raise MissingPath(f"pipeline file {path} does not exist (e.g. experiments/shapes/pipeline.yaml)")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict) or "run_dir" not in cfg or not cfg.get("stages"):
        raise ConfigError(f"{path}: needs `run_dir` and a non-empty `stages` list")
    unknown = set(cfg) - {"run_dir", "reuse", "stages"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (run_dir, reuse, stages)")
    stages: list[Stage] = []
    for i, raw in enumerate(cfg["stages"]):
        where = f"{path}: stages[{i}]"
        unknown = set(raw) - {"name", "fit", "command", "overrides", "init_from", "with_previous"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        if "name" not in raw or any(s.name == raw["name"] for s in stages):
            raise ConfigError(f"{where}: every stage needs a unique `name`")
        if bool(raw.get("fit")) == bool(raw.get("command")):
            raise ConfigError(f"{where} ({raw['name']}): give exactly one of `fit` (a config) or `command`")
        stage = Stage(**raw)
        if stage.init_from is not _PREVIOUS and stage.init_from is not None:
            if not any(s.name == stage.init_from and s.fit for s in stages):
                raise ConfigError(f"{where} ({stage.name}): init_from {stage.init_from!r} is not an earlier fit stage")
        if stage.with_previous and not stages:
            raise ConfigError(f"{where} ({stage.name}): the first stage has no previous stage to run with")
        stages.append(stage)
        feeding = [sorted(_inputs(stage, stages[:-1]) & {s.name for s in lane}) for lane in stage_lanes(stages)[-1]]
        feeding = [names for names in feeding if names]
        if len(feeding) > 1:
            raise ConfigError(
                f"{where} ({stage.name}): reads {feeding[0] + feeding[1]}, which run side by side; "
                f"a stage can follow one lane of its group, not two"
            )
    return Pipeline(Path(cfg["run_dir"]), stages, _reuse(cfg.get("reuse"), stages, path))


def _reuse(raw: object, stages: list[Stage], path: str | Path) -> Reuse | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"from", "stages"} or not isinstance(raw["stages"], list):
        raise ConfigError(f"{path}: reuse must be {{from: DIR, stages: [NAME, ...]}}, got {raw!r}")
    unknown = set(raw["stages"]) - {s.name for s in stages}
    if unknown:
        raise ConfigError(f"{path}: reuse names stages this pipeline does not have: {sorted(unknown)}")
    return Reuse(Path(raw["from"]), frozenset(raw["stages"]))


def _source(stage: Stage, earlier: list[Stage]) -> str | None:
    """The fit stage whose export a fit `stage` starts from, if any."""
    if stage.init_from is not _PREVIOUS:
        return stage.init_from  # type: ignore[return-value]
    fits = [s.name for s in earlier if s.fit]
    return fits[-1] if fits else None


def _inputs(stage: Stage, earlier: list[Stage]) -> set[str]:
    """Names of the `earlier` stages whose outputs `stage` reads."""
    text = " ".join(map(str, [*stage.command, *stage.overrides.values()]))
    used = {s.name for s in earlier if "{" + s.name + "}" in text}
    source = _source(stage, earlier) if stage.fit else None
    return used | ({source} if source else set())


def stage_lanes(stages: list[Stage]) -> list[list[list[Stage]]]:
    """Groups (a stage and the `with_previous` ones after it), each as lanes that run side by
    side: a stage that reads an earlier stage of its group goes after it in its lane, any
    other stage opens a lane of its own. The last stage may read two lanes (`load_pipeline`
    then refuses it); it joins the first."""
    groups: list[list[list[Stage]]] = []
    for i, stage in enumerate(stages):
        if not stage.with_previous:
            groups.append([[stage]])
            continue
        inputs = _inputs(stage, stages[:i])
        lane = next((lane for lane in groups[-1] if inputs & {s.name for s in lane}), None)
        if lane is None:
            groups[-1].append([stage])
        else:
            lane.append(stage)
    return groups


def stage_args(stage: Stage, stages: list[Stage], run: Path, seed: int = 0) -> list[str]:
    """The `lit-caprl` argument list of one stage, with placeholders filled in."""
    names = {s.name: str(s.output(run)) for s in stages}
    ctx = {**names, "run": str(run), "out": str(stage.output(run)), "seed": str(seed)}
    fill = lambda v: str(v).format_map(ctx)  # noqa: E731
    if stage.command:
        return [fill(a) for a in stage.command]
    args = [
        "fit",
        *(a for config in stage.configs for a in ("-c", config)),
        f"--trainer.default_root_dir={run / stage.name}",
        f"--seed_everything={seed}",
        "--trainer.callbacks+=lit_caprl.callbacks.ProgressFile",
    ]
    loggers = [(OmegaConf.to_container(OmegaConf.load(c)).get("trainer") or {}).get("logger") for c in stage.configs]
    logger = next((lg for lg in reversed(loggers) if lg is not None), None)
    if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
        args.append(f"--trainer.logger.init_args.save_dir={run / stage.name}")  # logs beside the export
    source = _source(stage, stages[: stages.index(stage)])
    if source is not None:
        args.append(f"--model.init_args.init_from={names[source]}")
    args += [f"--{k}={fill(v)}" for k, v in stage.overrides.items()]
    return args
