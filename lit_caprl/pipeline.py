"""`lit-caprl pipeline FILE`: run a pipeline file's stages (`pipeline_file.py`) in order under
one run directory, checkpoint to checkpoint.

A stage whose output exists is done and skipped (or linked from `reuse`), so rerunning
continues where the last run stopped; `--force NAME` redoes NAME and every stage after it.
Each stage runs in a fresh process. Wall times go to `{run}/stages.json`, with how far each
fit stage trained and what stopped it: a stage that its `max_time` safety net cut short is
reported loudly, here and in the report. Lanes of a group run side by side, sharing the
machine's cores evenly (`OMP_NUM_THREADS`), their output in `{run}/logs/NAME.log`, while the
console shows one progress line per running stage (from its `progress.json`, see
`ProgressFile`). If one lane fails, the pipeline stops once the others have finished,
keeping what they wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lit_caprl.errors import ConfigError
from lit_caprl.pipeline_file import Reuse, Stage, load_pipeline, stage_args, stage_lanes


def run_in_subprocess(args: list[str], threads: int | None = None, log: Path | None = None) -> None:
    """Each stage in a fresh process: its memory is returned, and a crash stops the pipeline.
    `threads` caps its CPU threads; `log` takes its output instead of the console."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") if log is not None else contextlib.nullcontext() as out:
        subprocess.run([sys.executable, "-m", "lit_caprl.cli", *args], check=True, env=env, stdout=out, stderr=out)


Runner = Callable[[list[str], int | None, Path | None], None]


def run_pipeline(
    path: str | Path, force: str | None = None, runner: Runner = run_in_subprocess, seed: int | None = None
) -> Path:
    run, stages, reuse = load_pipeline(path)
    if seed is not None:
        run = run.with_name(f"{run.name}-seed{seed}")
        reuse = reuse._replace(source=reuse.source.with_name(f"{reuse.source.name}-seed{seed}")) if reuse else None
    names = [s.name for s in stages]
    if force is not None and force not in names:
        raise ConfigError(f"--force {force!r}: no such stage; stages are {names}")
    run.mkdir(parents=True, exist_ok=True)
    timings_file = run / "stages.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    redo = set(names[names.index(force) :]) if force else set()
    for group in stage_lanes(stages):
        lanes = [todo for lane in group if (todo := [s for s in lane if _pending(s, run, redo, reuse)])]
        failed = []
        if len(lanes) == 1:
            for stage in lanes[0]:
                timings[stage.name] = _run_stage(stage, stages, run, runner, seed=seed or 0)
        elif lanes:
            threads = max(1, len(os.sched_getaffinity(0)) // len(lanes))
            finished: dict[str, dict] = {}
            with ThreadPoolExecutor(len(lanes) + 1) as pool:
                futures = [
                    pool.submit(_run_lane, lane, finished, stages, run, runner, threads, seed or 0) for lane in lanes
                ]
                files = {s.name: run / s.name / "progress.json" for lane in lanes for s in lane if s.fit}
                pool.submit(_show_progress, files, futures, finished)
            failed = [f.exception() for f in futures if f.exception()]
            timings.update(finished)
        _write_json(timings_file, timings)
        if failed:
            raise failed[0]  # once every lane beside it has stopped, keeping what they wrote
    return run


def _run_lane(
    lane: list[Stage], finished: dict, stages: list[Stage], run: Path, runner: Runner, threads: int, seed: int
) -> None:
    """A lane's stages one after the other; each one's record goes to `finished` as it ends."""
    for stage in lane:
        finished[stage.name] = _run_stage(stage, stages, run, runner, threads, seed)


def _pending(stage: Stage, run: Path, redo: set[str], reuse: Reuse | None = None) -> bool:
    """Whether `stage` must run: its output is missing (and not in `reuse`), or it is being
    redone (`--force`, which also drops a link to a reused stage, never the reused files)."""
    out, home = stage.output(run), run / stage.name
    if stage.name in redo:
        if home.is_symlink():
            home.unlink()
        elif out.exists():
            shutil.rmtree(out)
    elif (
        (home.is_symlink() or not home.exists())
        and reuse is not None
        and stage.name in reuse.stages
        and stage.output(reuse.source).exists()
    ):
        if home.is_symlink():
            home.unlink()
        home.symlink_to((reuse.source / stage.name).resolve(), target_is_directory=True)
        print(f"== {stage.name}: reused from {reuse.source / stage.name}", flush=True)
        return False
    if out.exists():
        print(f"== {stage.name}: done ({out}), skipped", flush=True)
        return False
    return True


PROGRESS_EVERY_S = 15.0


def progress_line(name: str, state: dict) -> str:
    """`reader_sft          3,100/7,000 steps  train/loss 0.412  ETA 4:10`."""
    total = f"/{state['total']:,}" if state.get("total") else ""
    value = f"  {state['metric']} {state['value']:.3f}" if state.get("metric") else ""
    eta = f"  ETA {int(state['eta_s']) // 60}:{int(state['eta_s']) % 60:02d}" if state.get("eta_s") is not None else ""
    return f"   {name:<18} {state['step']:,}{total} {state['unit']}{value}{eta}"


def _show_progress(files: dict[str, Path], futures: list, finished: dict) -> None:
    """While lanes run side by side, print one line per started fit stage every `PROGRESS_EVERY_S`."""
    due = time.monotonic() + PROGRESS_EVERY_S
    while not all(f.done() for f in futures):
        time.sleep(0.1)
        if time.monotonic() < due:
            continue
        due += PROGRESS_EVERY_S
        for name, path in files.items():
            with contextlib.suppress(OSError, ValueError):  # not written yet, or being replaced
                state = json.loads(path.read_text())
                print(progress_line(name, state) + ("  (done)" if name in finished else ""), flush=True)


def _run_stage(
    stage: Stage, stages: list[Stage], run: Path, runner: Runner, threads: int | None = None, seed: int = 0
) -> dict:
    """Run one stage (its output to `{run}/logs/NAME.log` when it runs beside others); its wall
    time and, for a fit stage, how far it trained and what stopped it."""
    args = stage_args(stage, stages, run, seed)
    log = run / "logs" / f"{stage.name}.log" if threads else None
    beside = f" ({threads} thread(s), output in {log})" if log else ""
    print(f"== {stage.name}: lit-caprl {' '.join(args)}{beside}", flush=True)
    start = time.perf_counter()
    runner(args, threads, log)
    if not stage.output(run).exists():
        raise RuntimeError(f"stage {stage.name} finished without writing its output {stage.output(run)}")
    wall = round(time.perf_counter() - start, 1)
    print(f"== {stage.name}: {wall} s", flush=True)
    record = stage.output(run) / "lit_caprl.json"
    training = json.loads(record.read_text()).get("training", {}) if stage.fit and record.is_file() else {}
    if training.get("stopped_by") == "time_limit":
        print(
            f"== WARNING: {stage.name} was stopped by its time limit (max_time) after {training['steps']:,} of "
            f"{training['max_steps']:,} steps: this machine is slower than the config assumes, and its model is "
            "not the one the config promises. Raise trainer.max_time to let it finish.",
            flush=True,
        )
    return {"wall_s": wall} | training


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
