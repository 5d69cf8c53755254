"""Caption utility on benchmarks, side by side: one table per benchmark with a row per
checkpoint (and gold captions as the ceiling where the benchmark has them), then stage wall
times and the GRPO reward curve. Written as report.json (machine-readable), report.md,
report.png and report.html (one self-contained page: also each row's captions of a dozen
images, side by side). `lit-caprl eval` writes the tables; `lit-caprl report` adds the run's story.

A row: `utility` (the mean over all captions; Prism's measure), `best_of_n` (the mean over
images of the best of its N captions, as CapRL reports with N=4), and, where the records keep
a ShapesWorld scene, object `precision` and `recall`; mean `length` in words.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from html import escape
from pathlib import Path

import torch

from lit_caprl import evaluate, mcq
from lit_caprl.data import prompts
from lit_caprl.data.importer import cached_import
from lit_caprl.data.schema import Record, load_records
from lit_caprl.models.loading import load_export, load_model

COLUMNS = ("utility", "best_of_n", "precision", "recall", "length")
EXAMPLES = 12  # images per benchmark whose captions the report shows side by side


def benchmark_records(path: str, fmt: str = "jsonl", n: int | None = None) -> list[Record]:
    """A benchmark's records (our JSONL, or any importable format such as `prism`), `n` of them
    sampled with a fixed seed; each needs questions."""
    records = load_records(path if fmt == "jsonl" else cached_import(path, fmt))[0]
    bare = [r.id for r in records if not r.questions]
    if bare:
        raise ValueError(f"{path}: records without questions cannot measure utility: {bare[:5]}")
    return evaluate.sample_records(records, n, seed=0) if n is not None else records


def score_row(
    judge, captions: list[str], records: list[Record], seeds, num_captions: int = 1
) -> dict[str, float | str | None]:
    """One table row for `num_captions` captions per record (a record's consecutively)."""
    repeated = [r for r in records for _ in range(num_captions)]
    scores = evaluate.caption_scores(judge, captions, repeated, seeds)
    row = {"utility": float(scores.mean()),
           "best_of_n": float(scores.view(-1, num_captions).max(1).values.mean()) if num_captions > 1 else None,
           "precision": None, "recall": None, "length": sum(len(c.split()) for c in captions) / len(captions),
           "examples": captions[::num_captions][:EXAMPLES]}  # each shown image's first caption
    if evaluate.has_objects(records):
        fidelity = evaluate.caption_fidelity(captions, repeated)
        row |= {"precision": fidelity["precision"], "recall": fidelity["recall"]}
    return row


def evaluate_benchmarks(
    benchmarks: dict[str, str],
    reader: str,
    policies: dict[str, str],
    n: int | None = 500,
    seeds=(0, 1, 2),
    answer_format: mcq.AnswerFormat | None = None,
    fmt: str = "jsonl",
    num_captions: int = 1,
    temperature: float = 0.7,
    prompt: str = prompts.DEFAULT_CAPTION_PROMPT,
    max_new_tokens: int = 64,
    captions: dict[str, str] | None = None,
) -> dict[str, dict]:
    """{benchmark: {"rows": {row: scores}, "images": its first `EXAMPLES` images}}: each
    policy's captions of `n` records per benchmark (greedy for one caption, else `num_captions`
    sampled at `temperature`), scored by the frozen reader;
    gold captions where every record has one (the ceiling), and the empty caption for scale.
    `captions` adds rows from `lit-caprl caption` output files (NAME -> JSONL), e.g. written on
    GPUs beforehand: their first `num_captions` captions per image are scored."""
    judge = evaluate.utility_judge(reader, answer_format)
    data = {name: benchmark_records(path, fmt, n) for name, path in benchmarks.items()}
    tables = {name: {"rows": {}, "images": [str(r.image) for r in recs[:EXAMPLES]]} for name, recs in data.items()}
    for row_name, path in (captions or {}).items():
        written = captions_file(path)
        for name, records in data.items():
            missing = [r.id for r in records if len(written.get(r.id, [])) < num_captions]
            if missing:
                raise ValueError(f"{path}: fewer than {num_captions} captions for {len(missing)} images of benchmark "
                                 f"{name!r}, e.g. ids {missing[:5]}; run `lit-caprl caption` on it")  # fmt: skip
            caps = [c for r in records for c in written[r.id][:num_captions]]
            tables[name]["rows"][row_name] = score_row(judge, caps, records, seeds, num_captions)
    for policy, path in policies.items():  # each policy is loaded once for every benchmark
        adapter = load_export(path)
        for name, records in data.items():
            caps = evaluate.generate_captions(adapter, records, prompt, max_new_tokens, temperature if
                                              num_captions > 1 else 0.0, num_captions=num_captions)  # fmt: skip
            tables[name]["rows"][policy] = score_row(judge, caps, records, seeds, num_captions)
        del adapter
    for name, records in data.items():
        rows = tables[name]["rows"]
        if all(r.captions for r in records):
            rows["gold"] = score_row(judge, [r.captions[0] for r in records], records, seeds)
        rows["empty"] = score_row(judge, [""] * len(records), records, seeds) | {"precision": None, "recall": None}
    return tables


def captions_file(path: str) -> dict[str, list[str]]:
    """id -> captions from a `lit-caprl caption` output file."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
                out[str(row["id"])] = list(row["captions"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a caption row {{id, captions}} ({e})") from e
    return out


def reader_quality(
    data: str, reader: str, n: int = 500, answer_format: mcq.AnswerFormat | None = None
) -> dict[str, float] | None:
    """The judge's own held-out accuracy on ShapesWorld (caption, question) pairs labelled from
    the scene: utility numbers mean little when this is low. None for other data."""
    records = evaluate.sample_records(load_records(data)[0], n, seed=0)
    if not evaluate.has_objects(records):
        return None
    with torch.no_grad():
        return evaluate.reader_accuracy(load_model(reader), records, mcq.resolve_format(reader, answer_format))


MIN_GAP = 0.02  # below this, gold vs start is within evaluation noise: no headroom to speak of


def gap_closed(rows: dict, name: str, start: str = "sft") -> float | None:
    """(utility(name) - utility(start)) / (utility(gold) - utility(start)): the share of the
    headroom a stage closed; None when the headroom is below `MIN_GAP` (a ratio of noise)."""
    gap = rows["gold"]["utility"] - rows[start]["utility"]
    return (rows[name]["utility"] - rows[start]["utility"]) / gap if gap >= MIN_GAP else None


def reward_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """(rollout step, mean reward) from a CSVLogger `metrics.csv` of a GRPO run."""
    out = []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train/reward") and row.get("rollout_step"):
                out.append((int(float(row["rollout_step"])), float(row["train/reward"])))
    return out


def _cell(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(tables: dict[str, dict], stages: dict) -> str:
    cut = {name: s for name, s in stages.items() if s.get("stopped_by") == "time_limit"}
    lines = [f"**WARNING: {name} was stopped by its time limit after {s['steps']:,} of {s['max_steps']:,} steps; "
             "its model, and every row built on it, is not the one its config promises.**\n"
             for name, s in cut.items()]  # fmt: skip
    for bench, table in tables.items():
        rows = table["rows"]
        lines += [f"**{bench}**", "", "| checkpoint | utility | best of N | precision | recall | length | gap closed |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in rows.items():
            closed = gap_closed(rows, name) if {"sft", "gold"} <= set(rows) and name not in ("sft", "gold", "empty") \
                else None  # fmt: skip
            pct = f"{closed:.0%}" if closed is not None else ""
            lines.append(f"| {name} | {r['utility']:.3f} | {_cell(r['best_of_n'])} | {_cell(r['precision'])} "
                         f"| {_cell(r['recall'])} | {r['length']:.1f} | {pct} |")  # fmt: skip
        lines.append("")
    if stages:
        lines += ["| stage | wall s | steps | stopped by |", "|---|---|---|---|"]
        for name, s in stages.items():
            steps = s.get("rollout_steps", s.get("steps"))
            lines.append(f"| {name} | {s['wall_s']:.0f} | {'' if steps is None else f'{steps:,}'} "
                         f"| {s.get('stopped_by', '')} |")  # fmt: skip
    return "\n".join(lines).rstrip("\n") + "\n"


def plot(curve: list[tuple[int, float]], tables: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if curve:
        steps, rewards = zip(*curve, strict=True)
        left.plot(steps, rewards, lw=0.8)
    left.set(title="GRPO: mean reward per rollout step", xlabel="rollout step", ylabel="reward")
    width = 0.8 / len(tables)
    for k, (bench, table) in enumerate(tables.items()):
        rows = table["rows"]
        names = list(rows)
        right.bar([i + k * width for i in range(len(names))], [rows[n]["utility"] for n in names], width, label=bench)
        right.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    right.set(title="caption utility", ylabel="utility", ylim=(0, 1))
    if len(tables) > 1:
        right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    tables: dict[str, dict],
    stages: dict | None = None,
    curve: list[tuple[int, float]] | None = None,
    reader: dict | None = None,
) -> str:
    """Write report.json / report.md / report.png under `out_dir`; return the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages, curve = stages or {}, curve or []
    payload: dict = {"benchmarks": {}, "stages": stages, "reader": reader or {}}
    for bench, table in tables.items():
        rows = table["rows"]
        entry = {"rows": {name: {k: r.get(k) for k in COLUMNS} for name, r in rows.items()},
                 "images": table["images"],
                 "examples": {n: r.get("examples", []) for n, r in rows.items()}}  # fmt: skip
        if {"sft", "gold"} <= set(rows):
            entry["gap_closed"] = {n: gap_closed(rows, n) for n in rows if n not in ("sft", "gold", "empty")}
        payload["benchmarks"][bench] = entry
    (out / "report.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    md = markdown(tables, stages)
    if reader:
        md += (f"\nreader (the judge) on held-out (caption, question) pairs: accuracy {reader['accuracy']:.3f}, "
               f"cannot-answer accuracy {reader['cannot_answer_accuracy']:.3f}\n")  # fmt: skip
    (out / "report.md").write_text(md)
    plot(curve, tables, out / "report.png")
    (out / "report.html").write_text(html_page(tables, md, out / "report.png"), encoding="utf-8")
    return md


def _data_uri(path: str | Path) -> str:
    """An image inlined, so report.html opens anywhere, moved or mailed, without its files."""
    from lit_caprl.data.images import open_rgb

    buf = io.BytesIO()
    open_rgb(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def html_page(tables: dict[str, dict], md: str, plot_png: Path) -> str:
    """The report as one self-contained page: the tables, the curves, and for each benchmark its
    first images with every row's caption beside them (what RL changed, at a glance)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lit_caprl report</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}",
             "figure{display:flex;gap:1em;margin:0 0 1em 0} figure img{width:112px;height:auto;",
             "image-rendering:pixelated;border:1px solid #999} .row{color:#555;white-space:nowrap}",
             "</style></head><body><h1>lit_caprl report</h1>"]  # fmt: skip
    parts += [f"<p><b>{escape(line.strip('*'))}</b></p>" for line in md.splitlines() if line.startswith("**WARNING")]
    for bench, table in tables.items():
        head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in ("checkpoint", *COLUMNS))
        body = "".join("<tr>" + f"<td>{escape(name)}</td>" + "".join(f"<td>{_cell(r.get(c), '.3f')}</td>" for c in
                       COLUMNS) + "</tr>" for name, r in table["rows"].items())  # fmt: skip
        parts.append(f"<h2>{escape(bench)}</h2><table class='scores'><tr>{head}</tr>{body}</table>")
    parts.append(f"<h2>curves</h2><img class='plot' alt='reward curve and utility' src='{_data_uri(plot_png)}'>")
    for bench, table in tables.items():
        parts.append(f"<h2>{escape(bench)}: captions side by side</h2>")
        for i, image in enumerate(table["images"]):
            cells = "".join(f"<tr><td class='row'>{escape(name)}</td><td class='caption'>"
                            f"{escape(r['examples'][i]) if i < len(r.get('examples', [])) else ''}</td></tr>"
                            for name, r in table["rows"].items() if name != "empty")  # fmt: skip
            parts.append(f"<figure><img class='scene' alt='{escape(Path(image).name)}' src='{_data_uri(image)}'>"
                         f"<table>{cells}</table></figure>")  # fmt: skip
    # Each picture says whether it decoded, so a headless browser test can check that it rendered.
    parts.append("<script>window.addEventListener('load',()=>{for(const im of document.images)"
                 "im.dataset.rendered=im.complete&&im.naturalWidth>0;});</script></body></html>")  # fmt: skip
    return "\n".join(parts)


def log_to_wandb(out_dir: str | Path, project: str, name: str | None = None) -> None:
    """Log the written report as a W&B artifact (type `report`) and its tables as a `wandb.Table`;
    offline (`WANDB_MODE=offline`) it waits in the run directory for `wandb sync`."""
    import wandb

    out = Path(out_dir)
    payload = json.loads((out / "report.json").read_text())
    run = wandb.init(project=project, name=name, job_type="report", dir=str(out.parent))
    columns = ["benchmark", "checkpoint", *COLUMNS]
    rows = [[bench, ckpt, *(r[c] for c in COLUMNS)]
            for bench, entry in payload["benchmarks"].items() for ckpt, r in entry["rows"].items()]  # fmt: skip
    run.log(
        {"report/table": wandb.Table(columns=columns, data=rows), "report/plot": wandb.Image(str(out / "report.png"))}
    )
    artifact = wandb.Artifact("pipeline-report", type="report")
    for f in ("report.json", "report.md", "report.png"):
        artifact.add_file(str(out / f))
    run.log_artifact(artifact)
    run.finish()
