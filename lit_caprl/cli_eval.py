"""`lit-caprl eval` and `lit-caprl report`: caption utility of captioners on multiple-choice
benchmarks (Prism's protocol), and the same plus a run's curves and the reader's own accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

MCQ_FORMATS = ("letter", "cloze", "caprl")  # lit_caprl.mcq.FORMATS, without importing torch for --help
ANSWER_FORMAT_HELP = (
    "how the reader (and VLM) answer MCQs (see lit_caprl.mcq); default: the format their export records, else letter"
)


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    """The inputs `eval` and `report` share."""
    p.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a benchmark with multiple-choice questions per image; repeat",
    )
    p.add_argument("--data", help="shorthand for --benchmark heldout=FILE")
    p.add_argument(
        "--format",
        default="jsonl",
        choices=("jsonl", "caprl-qa", "verl", "prism"),
        help="how the benchmark files are written (prism: one {image, prompt, answer} row per question)",
    )
    p.add_argument("--reader", required=True, help="the frozen text-only reader that answers from the captions")
    p.add_argument("--policy", action="append", default=[], metavar="NAME=EXPORT", help="a captioner row; repeat")
    p.add_argument(
        "--captions",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a row from `lit-caprl caption` output (captions written beforehand, e.g. on GPUs); repeat",
    )
    p.add_argument("--num-captions", type=int, default=1, help="captions per image: 1 greedy, N sampled (CapRL: 4)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature when --num-captions > 1")
    p.add_argument("--prompt", help="the captioning prompt (default: the ShapesWorld one)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="caption length limit")
    p.add_argument("--n", type=int, default=500, help="records per benchmark (sampled with a fixed seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds (MCQ draws)")
    p.add_argument("--answer-format", choices=MCQ_FORMATS, help=ANSWER_FORMAT_HELP)
    p.add_argument(
        "--rows-from",
        metavar="DIR",
        help="keep the rows of an earlier eval/report in DIR, scored with the same settings (checked)",
    )
    p.add_argument("--out", required=True, help="directory for report.json, report.md, report.png")


def _benchmarks(a: argparse.Namespace) -> dict[str, str]:
    from lit_caprl.errors import ConfigError

    benchmarks = dict(item.split("=", 1) for item in a.benchmark) | ({"heldout": a.data} if a.data else {})
    if not benchmarks:
        raise ConfigError("give at least one --benchmark NAME=FILE (or --data FILE)")
    return benchmarks


def _settings(a: argparse.Namespace) -> dict:
    """What a row's numbers depend on besides its captioner: rows scored with equal settings
    can share one table (`--rows-from`)."""
    from lit_caprl import mcq
    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT

    local = lambda path: str(Path(path).resolve()) if Path(path).exists() else path  # noqa: E731
    return {
        "benchmarks": {name: local(path) for name, path in _benchmarks(a).items()},
        "format": a.format,
        "reader": local(a.reader),
        "answer_format": mcq.resolve_format(a.reader, a.answer_format),
        "n": a.n,
        "seeds": a.seeds,
        "num_captions": a.num_captions,
        "temperature": a.temperature,
        "prompt": a.prompt or DEFAULT_CAPTION_PROMPT,
        "max_new_tokens": a.max_new_tokens,
    }


def _tables(a: argparse.Namespace, settings: dict, earlier: dict | None = None) -> dict:
    from lit_caprl import report

    return report.evaluate_benchmarks(
        _benchmarks(a),
        a.reader,
        dict(item.split("=", 1) for item in a.policy),
        a.n,
        a.seeds,
        settings["answer_format"],
        a.format,
        a.num_captions,
        a.temperature,
        settings["prompt"],
        a.max_new_tokens,
        dict(item.split("=", 1) for item in a.captions),
        earlier,
    )


def eval_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lit-caprl eval",
        description="Prism-style caption utility: captioners caption "
        "each benchmark's images, a text-only reader answers its questions from the captions.",
    )
    _benchmark_args(p)
    a = p.parse_args(argv)
    from lit_caprl import report, report_files
    from lit_caprl.io import atomic_dir

    settings = _settings(a)
    earlier = report.earlier_rows(a.rows_from, settings)[0] if a.rows_from else None
    tables = _tables(a, settings, earlier)
    with atomic_dir(a.out) as tmp:
        print(report_files.write_report(tmp, tables, settings=settings))
    return 0


def report_command(argv: list[str]) -> int:
    import json

    from lit_caprl import report, report_files
    from lit_caprl.io import atomic_dir

    p = argparse.ArgumentParser(
        prog="lit-caprl report",
        description="`eval`, plus a run's reward curve, stage wall times and the reader's own accuracy (ShapesWorld).",
    )
    _benchmark_args(p)
    p.add_argument("--n-reader", type=int, default=200, help="held-out records for the judge's own accuracy")
    p.add_argument("--curve", help="a GRPO log dir: its newest metrics.csv gives the reward curve")
    p.add_argument("--stages", help="stages.json with wall times (written by `lit-caprl pipeline`)")
    p.add_argument("--wandb-project", help="also log the report to this W&B project (as an artifact)")
    a = p.parse_args(argv)
    settings = _settings(a)
    earlier, reader = report.earlier_rows(a.rows_from, settings) if a.rows_from else (None, {})
    tables = _tables(a, settings, earlier)
    curve = []
    if a.curve:
        logs = sorted(Path(a.curve).rglob("metrics.csv"), key=lambda f: f.stat().st_mtime)
        curve = report.reward_curve(logs[-1]) if logs else []
    stages = json.loads(Path(a.stages).read_text()) if a.stages and Path(a.stages).exists() else {}
    if reader.get("records") != a.n_reader and a.data:  # else the earlier report's, on the same data and reader
        reader = report.reader_quality(a.data, a.reader, a.n_reader, a.answer_format)
    with atomic_dir(a.out) as tmp:
        print(report_files.write_report(tmp, tables, stages, curve, reader, settings))
    if a.wandb_project:
        report_files.log_to_wandb(a.out, a.wandb_project)
    return 0
