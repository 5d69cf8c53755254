"""`lit-caprl`: LightningCLI for `fit`/`validate` (`trainer_cli.py`), plus the tools. Heavy
modules are imported by the command that needs them, so `--help` and the data tools answer fast.

lit-caprl fit -c experiments/shapes/captioner_pretrain.yaml [-c more.yaml] [--model.init_args.optim.lr=1e-4]
lit-caprl make-tiny --family qwen2_5_vl --size small --out runs/models/qwen2_5_vl-small
lit-caprl data shapes --out runs/data/shapes --n 4000 --n-val 500 --seed 0
lit-caprl data check FILE.jsonl
lit-caprl data import --format caprl-qa --in CapRL-QA-75K/ --out data/caprl [--val-fraction 0.01] [--skip-bad]
lit-caprl mine-pairs --config experiments/shapes/mine_pairs.yaml [--min_margin 0.2]
lit-caprl eval --benchmark NAME=FILE [--format prism] --reader READER --policy sft=EXPORT [--num-captions 4] --out DIR
lit-caprl report --data val.jsonl --reader READER --policy sft=EXPORT --policy grpo=EXPORT --out DIR
lit-caprl pipeline experiments/shapes/pipeline.yaml [--force grpo]
lit-caprl caption --model EXPORT --in IMAGES_DIR --out captions.jsonl [--num-captions 4 --temperature 0.7]
lit-caprl curate --data val.jsonl --vlm VLM_EXPORT --reader READER_EXPORT --out DIR
lit-caprl plan -c experiments/caprl/grpo.yaml --gpu-memory 80
"""

from __future__ import annotations

import argparse
import os
import sys

from lit_caprl.cli_eval import ANSWER_FORMAT_HELP, MCQ_FORMATS, eval_command, report_command

HELP = """usage: lit-caprl COMMAND [options]      (lit-caprl COMMAND --help for a command's options)

train (LightningCLI, YAML configs in experiments/):
  fit          train a stage: lit-caprl fit -c experiments/shapes/grpo.yaml [--key=value ...]
  validate     run a stage's validation loop on a config (and --ckpt_path)
tools:
  pipeline     run a pipeline file's stages in order, skipping finished ones
  data         ShapesWorld data (shapes), check JSONL (check), import CapRL / verl / captions / Prism data (import)
  make-tiny    build a tiny random-init Qwen2.5-VL / LLaVA / Qwen2 / CLIP model with a word-level tokenizer
  caption      caption a folder, JSONL or parquet of images with a trained export (resumable)
  eval         Prism-style caption utility of captioners on multiple-choice benchmarks
  report       eval plus a run's reward curve, stage times and the reader's own accuracy
  mine-pairs   sample, score and pair captions for DPO
  curate       CapRL's QA filter: keep questions that need the image
  plan         per-GPU memory of a fit config at its real scale, and what makes it fit a GPU

A mistake in a command, config or data prints one line (LIT_CAPRL_DEBUG=1 shows the traceback).
"""


def _make_tiny(argv: list[str]) -> int:
    from typing import get_args

    from lit_caprl.models.tiny import Family, Size, make_tiny

    p = argparse.ArgumentParser(prog="lit-caprl make-tiny", description="Build and save a tiny random-init model.")
    p.add_argument("--family", required=True, choices=get_args(Family))
    p.add_argument("--size", default="tiny", choices=get_args(Size))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(make_tiny(a.family, a.size, a.out, a.seed))
    return 0


def _data(argv: list[str]) -> int:
    import json

    from lit_caprl.data import schema, shapes
    from lit_caprl.data.formats import FORMATS

    p = argparse.ArgumentParser(prog="lit-caprl data")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shapes", help="write a ShapesWorld data set (train.jsonl, val.jsonl, images/)")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=4000, help="training scenes")
    s.add_argument("--n-val", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-objects", type=int, default=1)
    s.add_argument("--max-objects", type=int, default=4)
    s.add_argument("--leaky", type=float, default=0.0, help="share of scenes with a question answerable blind")
    c = sub.add_parser("check", help="validate JSONL files; print every problem as file:line: field: message")
    c.add_argument("files", nargs="+")
    i = sub.add_parser("import", help="convert CapRL / verl / captions / Prism-style data into our JSONL + images/")
    i.add_argument("--format", required=True, choices=FORMATS)
    i.add_argument(
        "--in",
        dest="source",
        required=True,
        help=".parquet/.json/.jsonl file, directory, glob, or a datasets save_to_disk directory",
    )
    i.add_argument("--out", required=True, help="directory for train.jsonl (val.jsonl), images/, import.json")
    i.add_argument("--image-root", help="resolve relative image paths here (default: beside each input file)")
    i.add_argument("--val-fraction", type=float, default=0.0, help="share of records (by id hash) for val.jsonl")
    i.add_argument("--skip-bad", action="store_true", help="count and list bad rows in import.json instead of stopping")
    a = p.parse_args(argv)
    if a.cmd == "shapes":
        print(shapes.write_dataset(a.out, a.n, a.n_val, a.seed, a.min_objects, a.max_objects, a.leaky))
        return 0
    if a.cmd == "import":
        from lit_caprl.data.importer import import_data

        try:
            report = import_data(a.source, a.format, a.out, a.image_root, a.val_fraction, a.skip_bad)
        except schema.DataError as e:
            print(f"{e}\n(--skip-bad counts such rows in import.json and goes on)", file=sys.stderr)
            return 1
        report.pop("skipped_rows")
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    bad = 0
    for f in a.files:
        records, problems = schema.scan(f)
        for prob in problems:
            print(prob)
        bad += len(problems)
        print(f"{f}: {len(records)} good records, {len(problems)} problems", file=sys.stderr)
    return 1 if bad else 0


def _mine_pairs(argv: list[str]) -> int:
    from jsonargparse import CLI

    from lit_caprl.mining import mine_pairs

    CLI(mine_pairs, args=argv, as_positional=False, parser_mode="omegaconf", prog="lit-caprl mine-pairs")
    return 0


def _curate(argv: list[str]) -> int:
    from lit_caprl.curation import curate

    p = argparse.ArgumentParser(prog="lit-caprl curate", description="Keep MCQs that need the image (CapRL's filter).")
    p.add_argument("--data", required=True, help="JSONL with candidate MCQs")
    p.add_argument("--vlm", required=True, help="a VLM export that answers MCQs from the image")
    p.add_argument("--reader", required=True, help="the text-only reader export (answers blind)")
    p.add_argument("--out", required=True, help="directory for curated.jsonl and stats.json")
    p.add_argument("--tau-v", type=float, default=0.75, help="keep if visual accuracy > this")
    p.add_argument("--tau-b", type=float, default=0.25, help="... and blind accuracy < this")
    p.add_argument("--answer-format", choices=MCQ_FORMATS, help=ANSWER_FORMAT_HELP)
    a = p.parse_args(argv)
    curate(a.data, a.vlm, a.reader, a.out, a.tau_v, a.tau_b, a.answer_format)
    return 0


def _caption(argv: list[str]) -> int:
    from lit_caprl.data.formats import FORMATS

    p = argparse.ArgumentParser(
        prog="lit-caprl caption",
        description="Caption images with a trained export "
        "(JSONL out: id, image, captions; a rerun skips the ids already written).",
    )
    p.add_argument("--model", required=True, help="captioner export (save_pretrained) or peft adapters directory")
    p.add_argument("--base", help="the base model of adapters (default: the one adapter_config.json names)")
    p.add_argument("--in", dest="source", required=True, help="a folder of images, a JSONL, or a --format source")
    p.add_argument("--format", default="jsonl", choices=("jsonl", *FORMATS), help="how to read --in (not a folder)")
    p.add_argument("--image-root", help="resolve relative image paths of a --format source here")
    p.add_argument("--out", required=True, help="JSONL file to append captions to")
    p.add_argument("--num-captions", type=int, default=1, help="captions per image (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompt", default=None, help="the captioning prompt (default: the ShapesWorld one)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto", help="devices (ranks) to caption on, as in `fit`")
    a = p.parse_args(argv)
    from lit_caprl.data.prompts import DEFAULT_CAPTION_PROMPT
    from lit_caprl.data.sources import source_records

    source_records(a.source, a.format, a.image_root)  # a wrong --in fails here, before Lightning loads

    from lit_caprl.captioning import caption

    devices = int(a.devices) if a.devices.isdigit() else a.devices
    n = caption(
        a.source,
        a.model,
        a.out,
        a.format,
        a.image_root,
        a.batch_size,
        a.accelerator,
        devices,
        base=a.base,
        prompt=a.prompt or DEFAULT_CAPTION_PROMPT,
        num_captions=a.num_captions,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        seed=a.seed,
        dtype=a.dtype,
    )
    print(f"captioned {n} images -> {a.out}", file=sys.stderr)
    return 0


def _plan(argv: list[str]) -> int:
    from lit_caprl.plan import main as plan_main

    return plan_main(argv)


def _pipeline(argv: list[str]) -> int:
    from lit_caprl.pipeline import run_pipeline
    from lit_caprl.pipeline_file import load_pipeline

    p = argparse.ArgumentParser(prog="lit-caprl pipeline", description="Run a pipeline file's stages in order.")
    p.add_argument("file")
    p.add_argument("--force", metavar="STAGE", help="redo STAGE and every stage after it")
    p.add_argument("--seed", type=int, help="seed of every stage ({seed}); the run goes to RUN_DIR-seedN")
    a = p.parse_args(argv)
    run = run_pipeline(a.file, a.force, seed=a.seed)
    for stage in load_pipeline(a.file).stages:  # in stage order: the last report is the run's whole table
        if (md := run / stage.name / "report.md").is_file():
            print(f"== {md}\n{md.read_text()}")
    return 0


TOOLS = {
    "make-tiny": _make_tiny,
    "data": _data,
    "eval": eval_command,
    "mine-pairs": _mine_pairs,
    "report": report_command,
    "curate": _curate,
    "caption": _caption,
    "pipeline": _pipeline,
    "plan": _plan,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    from lit_caprl.errors import UserError

    try:
        if args[0] in TOOLS:
            return TOOLS[args[0]](args[1:])
        if not args[0].startswith("-") and args[0] not in ("fit", "validate"):
            raise UserError(
                f"unknown command {args[0]!r}; the commands are fit, validate, {', '.join(TOOLS)} (lit-caprl --help)"
            )
        if args[0] in ("fit", "validate") and not {"-h", "--help"} & set(args):
            from lit_caprl.preflight import early_check

            early_check(args)  # mistakes the config shows, before Lightning is imported
        from lit_caprl.trainer_cli import CapRLCLI

        CapRLCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    except UserError as e:
        if os.environ.get("LIT_CAPRL_DEBUG"):
            raise
        print(f"lit-caprl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
