"""The run report: one row per checkpoint (and gold captions as the ceiling) with caption
utility, object precision, object recall and mean length; stage wall times; a plot of the
GRPO reward curve. Written as report.json (machine-readable), report.md and report.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lit_caprl import evaluate, mcq
from lit_caprl.data.schema import load_records
from lit_caprl.models.loading import load_model

COLUMNS = ("utility", "precision", "recall", "length")


def evaluate_rows(
    data: str,
    reader: str,
    policies: dict[str, str],
    n: int = 500,
    seeds=(0, 1, 2),
    answer_format: mcq.AnswerFormat | None = None,
) -> dict:
    """Greedy captions of each policy on `n` held-out records, scored by the frozen reader,
    plus the gold captions (the ceiling of utility) and, for scale, the empty caption."""
    records = evaluate.sample_records(load_records(data)[0], n, seed=0)
    judge = evaluate.utility_judge(reader, answer_format)
    captions = {name: evaluate.generate_captions(load_model(path), records) for name, path in policies.items()}
    captions["gold"] = [r.captions[0] for r in records]
    rows = {}
    for name, caps in captions.items():
        rows[name] = {"utility": evaluate.caption_utility(judge, caps, records, seeds),
                      **evaluate.caption_fidelity(caps, records), "example": caps[0]}  # fmt: skip
    rows["empty"] = {"utility": evaluate.caption_utility(judge, [""] * len(records), records, seeds),
                     "precision": 0.0, "recall": 0.0, "length": 0.0, "example": ""}  # fmt: skip
    return rows


def reader_quality(
    data: str, reader: str, n: int = 500, answer_format: mcq.AnswerFormat | None = None
) -> dict[str, float]:
    """The judge's own held-out accuracy: utility numbers mean little when this is low."""
    records = evaluate.sample_records(load_records(data)[0], n, seed=0)
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


def markdown(rows: dict, stages: dict) -> str:
    lines = ["| checkpoint | utility | precision | recall | length | gap closed |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        closed = gap_closed(rows, name) if "sft" in rows and name not in ("sft", "gold", "empty") else None
        pct = f"{closed:.0%}" if closed is not None else ""
        lines.append(f"| {name} | {r['utility']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
                     f"| {r['length']:.1f} | {pct} |")  # fmt: skip
    lines += ["", "| stage | wall s |", "|---|---|"]
    lines += [f"| {name} | {s['wall_s']:.0f} |" for name, s in stages.items()]
    return "\n".join(lines) + "\n"


def plot(curve: list[tuple[int, float]], rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if curve:
        steps, rewards = zip(*curve, strict=True)
        left.plot(steps, rewards, lw=0.8)
    left.set(title="GRPO: mean reward per rollout step", xlabel="rollout step", ylabel="reward")
    names = list(rows)
    right.bar(names, [rows[n]["utility"] for n in names])
    right.set(title="caption utility (held-out)", ylabel="utility", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: str | Path, rows: dict, stages: dict, curve: list[tuple[int, float]], reader: dict | None = None
) -> str:
    """Write report.json / report.md / report.png under `out_dir`; return the markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = {name: {k: r[k] for k in COLUMNS} for name, r in rows.items()}
    payload = {"rows": table, "stages": stages, "reader": reader or {},
               "examples": {n: r.get("example", "") for n, r in rows.items()}}  # fmt: skip
    if "sft" in rows:
        payload["gap_closed"] = {n: gap_closed(rows, n) for n in rows if n not in ("sft", "gold", "empty")}
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    md = markdown(rows, stages)
    if reader:
        md += (f"\nreader (the judge) on held-out (caption, question) pairs: accuracy {reader['accuracy']:.3f}, "
               f"cannot-answer accuracy {reader['cannot_answer_accuracy']:.3f}\n")  # fmt: skip
    (out / "report.md").write_text(md)
    plot(curve, rows, out / "report.png")
    return md


def log_to_wandb(out_dir: str | Path, project: str, name: str | None = None) -> None:
    """Log the written report as a W&B artifact (type `report`) and its table as a `wandb.Table`;
    offline (`WANDB_MODE=offline`) it waits in the run directory for `wandb sync`."""
    import wandb

    out = Path(out_dir)
    payload = json.loads((out / "report.json").read_text())
    run = wandb.init(project=project, name=name, job_type="report", dir=str(out.parent))
    columns = ["checkpoint", *COLUMNS]
    rows = [[ckpt, *(r[c] for c in COLUMNS)] for ckpt, r in payload["rows"].items()]
    run.log(
        {"report/table": wandb.Table(columns=columns, data=rows), "report/plot": wandb.Image(str(out / "report.png"))}
    )
    artifact = wandb.Artifact("pipeline-report", type="report")
    for f in ("report.json", "report.md", "report.png"):
        artifact.add_file(str(out / f))
    run.log_artifact(artifact)
    run.finish()
