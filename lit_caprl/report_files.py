"""What a report writes: report.json (machine-readable), report.md, report.png (reward curve
and utility bars) and report.html (one self-contained page that also shows each row's
captions of a dozen images side by side), and optionally a W&B artifact."""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path

from lit_caprl.report import COLUMNS, gap_closed, seed_groups, spread


def _cell(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(tables: dict[str, dict], stages: dict) -> str:
    cut = {name: s for name, s in stages.items() if s.get("stopped_by") == "time_limit"}
    lines = [
        f"**WARNING: {name} was stopped by its time limit after {s['steps']:,} of {s['max_steps']:,} steps; "
        "its model, and every row built on it, is not the one its config promises.**\n"
        for name, s in cut.items()
    ]
    for bench, table in tables.items():
        rows = table["rows"]
        lines += [
            f"**{bench}**",
            "",
            "| checkpoint | utility | best of N | precision | recall | length | repetition | gap closed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            closed = (
                gap_closed(rows, name)
                if {"sft", "gold"} <= set(rows) and name not in ("sft", "gold", "empty")
                else None
            )
            pct = f"{closed:.0%}" if closed is not None else ""
            se = r.get("utility_se")
            interval = f" ±{1.96 * se:.3f}" if se else ""
            lines.append(
                f"| {name} | {r['utility']:.3f}{interval} | {_cell(r['best_of_n'])} | {_cell(r['precision'])} "
                f"| {_cell(r['recall'])} | {r['length']:.1f} | {_cell(r.get('repetition'), '.2f')} | {pct} |"
            )
        if any(r.get("utility_se") for r in rows.values()):
            lines.append("\n± : a 95% interval of the utility over this benchmark's images (1.96 standard errors)")
        lines.append("")
        lines += _seed_table(rows)
    if stages:
        lines += ["| stage | wall s | steps | stopped by |", "|---|---|---|---|"]
        for name, s in stages.items():
            steps = s.get("rollout_steps", s.get("steps"))
            lines.append(
                f"| {name} | {s['wall_s']:.0f} | {'' if steps is None else f'{steps:,}'} | {s.get('stopped_by', '')} |"
            )
    return "\n".join(lines).rstrip("\n") + "\n"


def _seed_table(rows: dict[str, dict]) -> list[str]:
    """Recipes trained from several seeds (`NAME@seedK` rows): mean (min-max) over the seeds."""
    groups = seed_groups(rows)
    if not groups:
        return []

    def cell(names: list[str], column: str, fmt: str = ".3f") -> str:
        s = spread(rows, names, column)
        return "-" if s is None else f"{s[0]:{fmt}} ({s[1]:{fmt}}-{s[2]:{fmt}})"

    columns = ("utility", "precision", "recall", "length", "repetition")
    lines = ["across seeds: mean (min-max)", "", "| recipe | seeds | " + " | ".join(columns) + " | gap closed |"]
    lines.append("|---" * (len(columns) + 3) + "|")
    for recipe, names in groups.items():
        closed = [gap_closed(rows, n) for n in names] if {"sft", "gold"} <= set(rows) else []
        pct = f"{sum(closed) / len(closed):.0%}" if closed and None not in closed else ""
        cells = " | ".join(cell(names, c, ".1f" if c == "length" else ".3f") for c in columns)
        lines.append(f"| {recipe} | {len(names)} | {cells} | {pct} |")
    return [*lines, ""]


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
    settings: dict | None = None,
) -> str:
    """Write report.json / report.md / report.png under `out_dir`; return the markdown.
    `settings` (what the rows were scored with) lets a later report take rows from this one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages, curve = stages or {}, curve or []
    payload: dict = {"benchmarks": {}, "stages": stages, "reader": reader or {}, "settings": settings or {}}
    for bench, table in tables.items():
        rows = table["rows"]
        entry = {
            "rows": {name: {k: r.get(k) for k in COLUMNS} for name, r in rows.items()},
            "images": table["images"],
            "examples": {n: r.get("examples", []) for n, r in rows.items()},
        }
        if {"sft", "gold"} <= set(rows):
            entry["gap_closed"] = {n: gap_closed(rows, n) for n in rows if n not in ("sft", "gold", "empty")}
        groups = seed_groups(rows)
        if groups:  # recipes trained from several seeds: (mean, min, max) per column
            entry["seeds"] = {
                g: {c: spread(rows, names, c) for c in COLUMNS} | {"rows": names} for g, names in groups.items()
            }
        payload["benchmarks"][bench] = entry
    (out / "report.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    md = markdown(tables, stages)
    if reader:
        md += (
            f"\nreader (the judge) on held-out (caption, question) pairs: accuracy {reader['accuracy']:.3f}, "
            f"cannot-answer accuracy {reader['cannot_answer_accuracy']:.3f}\n"
        )
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
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lit_caprl report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}",
        "figure{display:flex;gap:1em;margin:0 0 1em 0} figure img{width:112px;height:auto;",
        "image-rendering:pixelated;border:1px solid #999} .row{color:#555;white-space:nowrap}",
        "</style></head><body><h1>lit_caprl report</h1>",
    ]
    parts += [f"<p><b>{escape(line.strip('*'))}</b></p>" for line in md.splitlines() if line.startswith("**WARNING")]
    for bench, table in tables.items():
        head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in ("checkpoint", *COLUMNS))
        body = "".join(
            "<tr>"
            + f"<td>{escape(name)}</td>"
            + "".join(f"<td>{_cell(r.get(c), '.3f')}</td>" for c in COLUMNS)
            + "</tr>"
            for name, r in table["rows"].items()
        )
        parts.append(f"<h2>{escape(bench)}</h2><table class='scores'><tr>{head}</tr>{body}</table>")
    parts.append(f"<h2>curves</h2><img class='plot' alt='reward curve and utility' src='{_data_uri(plot_png)}'>")
    for bench, table in tables.items():
        parts.append(f"<h2>{escape(bench)}: captions side by side</h2>")
        for i, image in enumerate(table["images"]):
            cells = "".join(
                f"<tr><td class='row'>{escape(name)}</td><td class='caption'>"
                f"{escape(r['examples'][i]) if i < len(r.get('examples', [])) else ''}</td></tr>"
                for name, r in table["rows"].items()
                if name != "empty"
            )
            parts.append(
                f"<figure><img class='scene' alt='{escape(Path(image).name)}' src='{_data_uri(image)}'>"
                f"<table>{cells}</table></figure>"
            )
    # Each picture says whether it decoded, so a headless browser test can check that it rendered.
    parts.append(
        "<script>window.addEventListener('load',()=>{for(const im of document.images)"
        "im.dataset.rendered=im.complete&&im.naturalWidth>0;});</script></body></html>"
    )
    return "\n".join(parts)


def log_to_wandb(out_dir: str | Path, project: str, name: str | None = None) -> None:
    """Log the written report as a W&B artifact (type `report`) and its tables as a `wandb.Table`;
    offline (`WANDB_MODE=offline`) it waits in the run directory for `wandb sync`."""
    import wandb

    out = Path(out_dir)
    payload = json.loads((out / "report.json").read_text())
    run = wandb.init(project=project, name=name, job_type="report", dir=str(out.parent))
    columns = ["benchmark", "checkpoint", *COLUMNS]
    rows = [
        [bench, ckpt, *(r.get(c) for c in COLUMNS)]
        for bench, entry in payload["benchmarks"].items()
        for ckpt, r in entry["rows"].items()
    ]
    run.log(
        {"report/table": wandb.Table(columns=columns, data=rows), "report/plot": wandb.Image(str(out / "report.png"))}
    )
    artifact = wandb.Artifact("pipeline-report", type="report")
    for f in ("report.json", "report.md", "report.png"):
        artifact.add_file(str(out / f))
    run.log_artifact(artifact)
    run.finish()
