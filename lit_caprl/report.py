"""Caption utility on benchmarks, side by side: one table per benchmark with a row per
checkpoint (and gold captions as the ceiling where the benchmark has them), then stage wall
times and the GRPO reward curve (`report_files.py` writes them). `lit-caprl eval` makes the
tables; `lit-caprl report` adds the run's story.

A row: `utility` (the mean over all captions; Prism's measure) and `utility_se`, its standard
error over the benchmark's images (the evaluation noise: which images were drawn, and the
reader's draws on them), `best_of_n` (the mean over images of the best of its N captions, as
CapRL reports with N=4), and, where the records keep a ShapesWorld scene, object `precision`
and `recall`; mean `length` in words.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from lit_caprl import evaluate, mcq
from lit_caprl.data import prompts
from lit_caprl.data.importer import cached_import
from lit_caprl.data.schema import Record, load_records
from lit_caprl.errors import ConfigError, MissingPath
from lit_caprl.models.loading import load_export, load_model

COLUMNS = ("utility", "utility_se", "best_of_n", "precision", "recall", "length", "repetition")
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
    per_image = scores.view(-1, num_captions).mean(1)
    row = {
        "utility": float(scores.mean()),
        "utility_se": float(per_image.std() / len(per_image) ** 0.5) if len(per_image) > 1 else None,
        "best_of_n": float(scores.view(-1, num_captions).max(1).values.mean()) if num_captions > 1 else None,
        "precision": None,
        "recall": None,
        "length": sum(len(c.split()) for c in captions) / len(captions),
        "repetition": sum(map(evaluate.repetition, captions)) / len(captions),
        "examples": captions[::num_captions][:EXAMPLES],
    }  # each shown image's first caption
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
    earlier: dict[str, dict[str, dict]] | None = None,
) -> dict[str, dict]:
    """{benchmark: {"rows": {row: scores}, "images": its first `EXAMPLES` images}}: each
    policy's captions of `n` records per benchmark (greedy for one caption, else `num_captions`
    sampled at `temperature`), scored by the frozen reader;
    gold captions where every record has one (the ceiling), and the empty caption for scale.
    `captions` adds rows from `lit-caprl caption` output files (NAME -> JSONL), e.g. written on
    GPUs beforehand: their first `num_captions` captions per image are scored. `earlier`
    ({benchmark: {row: scores}}, see `earlier_rows`) holds rows already scored with these
    settings: they are kept, not scored again."""
    data = {name: benchmark_records(path, fmt, n) for name, path in benchmarks.items()}
    tables = {name: {"rows": {}, "images": [str(r.image) for r in recs[:EXAMPLES]]} for name, recs in data.items()}
    for name, rows in (earlier or {}).items():
        again = sorted(set(rows) & (set(policies) | set(captions or {})))
        if again:
            raise ConfigError(f"rows {again} were scored earlier; give each row once")
        tables[name]["rows"].update(rows)
    judge = evaluate.utility_judge(reader, answer_format)
    for row_name, path in (captions or {}).items():
        written = captions_file(path)
        for name, records in data.items():
            missing = [r.id for r in records if len(written.get(r.id, [])) < num_captions]
            if missing:
                raise ValueError(
                    f"{path}: fewer than {num_captions} captions for {len(missing)} images of benchmark "
                    f"{name!r}, e.g. ids {missing[:5]}; run `lit-caprl caption` on it"
                )
            caps = [c for r in records for c in written[r.id][:num_captions]]
            tables[name]["rows"][row_name] = score_row(judge, caps, records, seeds, num_captions)
    for policy, path in policies.items():  # each policy is loaded once for every benchmark
        adapter = load_export(path)
        for name, records in data.items():
            caps = evaluate.generate_captions(
                adapter,
                records,
                prompt,
                max_new_tokens,
                temperature if num_captions > 1 else 0.0,
                num_captions=num_captions,
            )
            tables[name]["rows"][policy] = score_row(judge, caps, records, seeds, num_captions)
        del adapter
    for name, records in data.items():
        rows = tables[name]["rows"]
        if "gold" not in rows and all(r.captions for r in records):
            rows["gold"] = score_row(judge, [r.captions[0] for r in records], records, seeds)
        if "empty" not in rows:
            rows["empty"] = score_row(judge, [""] * len(records), records, seeds) | {"precision": None, "recall": None}
        for last in ("gold", "empty"):  # the ceiling and the floor close every table
            if last in rows:
                rows[last] = rows.pop(last)
    return tables


def earlier_rows(out_dir: str | Path, settings: dict) -> tuple[dict[str, dict[str, dict]], dict]:
    """The rows, per benchmark, and the reader's accuracy of an earlier `eval` or `report` in
    `out_dir`, checked to have been scored with these `settings` (the same benchmarks, reader,
    draws and captioning): rows that a later stage does not change are scored while it runs."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise MissingPath(f"{path} does not exist: --rows-from needs the output of an earlier eval or report")
    payload = json.loads(path.read_text())
    theirs = payload.get("settings", {})
    differ = sorted(k for k in settings.keys() | theirs.keys() if settings.get(k) != theirs.get(k))
    if differ:
        detail = "; ".join(f"{k}: {theirs.get(k)!r} there, {settings.get(k)!r} here" for k in differ)
        raise ConfigError(f"{path} was scored with other settings, so its rows cannot join this table ({detail})")
    rows = {
        bench: {name: {**row, "examples": entry["examples"].get(name, [])} for name, row in entry["rows"].items()}
        for bench, entry in payload["benchmarks"].items()
    }
    return rows, payload.get("reader") or {}


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
        accuracy = evaluate.reader_accuracy(load_model(reader), records, mcq.resolve_format(reader, answer_format))
    return accuracy | {"records": n}


MIN_GAP = 0.02  # below this, gold vs start is within evaluation noise: no headroom to speak of


def seed_groups(rows: dict[str, dict]) -> dict[str, list[str]]:
    """Rows named `NAME@seedK` grouped by NAME (the same recipe trained from several seeds)."""
    groups: dict[str, list[str]] = {}
    for name in rows:
        if "@seed" in name:
            groups.setdefault(name.split("@seed")[0], []).append(name)
    return groups


def spread(rows: dict[str, dict], names: list[str], column: str) -> tuple[float, float, float] | None:
    """(mean, min, max) of `column` over the rows `names`; None if any lacks it."""
    values = [rows[n].get(column) for n in names]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values), min(values), max(values)


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
