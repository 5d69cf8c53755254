"""`lit-caprl data import`: any supported format (see `formats.py`) -> our JSONL + `images/`.

Rows are read, converted and written one at a time (a CapRL-QA-75K shard with embedded
images is never held in memory), each image's bytes copied unchanged after a full decode.
A bad row stops the import naming file, row and field; with `skip_bad` it is counted and
listed in `import.json`. The output directory is written atomically, so re-running gives the
same files and a killed import leaves nothing half-written. DataModules call `cached_import`
to train on such sources without a separate step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from tqdm import tqdm

from lit_caprl.data.formats import FORMATS, Converted, Format, convert, image_hash
from lit_caprl.data.images import image_format
from lit_caprl.data.rows import BadRow, count_rows, input_files, read_rows
from lit_caprl.data.schema import DataError, Problem
from lit_caprl.io import atomic_dir

IMPORT_VERSION = 1  # part of `cached_import`'s key: bump when the output of an import changes


def _file_name(rid: str) -> str:
    """A file name for an id: the id itself when it is plain, else a cleaned id + its hash."""
    clean = re.sub(r"[^\w.-]", "_", rid, flags=re.ASCII)[:80]
    if clean == rid and not rid.startswith("."):
        return rid
    return f"{clean}-{hashlib.sha1(rid.encode()).hexdigest()[:8]}"


def in_val(rid: str, val_fraction: float) -> bool:
    """A stable split: the same id lands on the same side in every import."""
    return int(hashlib.sha1(rid.encode()).hexdigest()[:8], 16) / 2**32 < val_fraction


def import_data(
    source: str | Path,
    fmt: Format,
    out: str | Path,
    image_root: str | Path | None = None,
    val_fraction: float = 0.0,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Write `out/train.jsonl` (and `out/val.jsonl` when `val_fraction` > 0), `out/images/` and
    `out/import.json` (counts, every skipped row). Returns the `import.json` contents."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = input_files(source)
    bad: list[Problem] = []
    counts = {"rows": 0, "train": 0, "val": 0, "questions": 0, "captions": 0}
    grouped: dict[str, dict] = {}  # prism: a record per image, its questions from several rows
    where: dict[str, str] = {}  # id -> the row that introduced it
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        splits = {"train": open(tmp / "train.jsonl", "w", encoding="utf-8")}
        if val_fraction > 0:
            splits["val"] = open(tmp / "val.jsonl", "w", encoding="utf-8")
        bar = tqdm(total=count_rows(files), unit="row", desc=f"import {fmt}", disable=not progress)
        try:
            for file in files:
                base = Path(image_root) if image_root is not None else (file.parent if file.exists() else Path.cwd())
                unit = "line" if file.suffix == ".jsonl" else "row"
                for n, row in read_rows(file):
                    bar.update()
                    counts["rows"] += 1
                    try:
                        if isinstance(row, BadRow):
                            raise row
                        record = _record(convert(row, fmt, base), tmp, fmt, grouped, where, f"{file}:{n}")
                    except BadRow as e:
                        problem = Problem(file, n, e.field, e.message, unit)
                        if not skip_bad:
                            raise DataError([problem]) from None
                        bad.append(problem)
                        continue
                    if record is not None:
                        _write(record, splits, val_fraction, counts)
            for record in grouped.values():
                _write(record, splits, val_fraction, counts)
        finally:
            bar.close()
            for f in splits.values():
                f.close()
        if counts["train"] + counts["val"] == 0:
            raise DataError(bad or [Problem(files[0], 0, "file", "contains no rows")])
        report = {
            "source": str(source),
            "format": fmt,
            "image_root": None if image_root is None else str(image_root),
            "val_fraction": val_fraction,
            "records": counts["train"] + counts["val"],
            **counts,
            "skipped": len(bad),
            "skipped_rows": [str(p) for p in bad],
        }
        (tmp / "import.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _record(conv: Converted, out: Path, fmt: str, grouped: dict, where: dict, at: str) -> dict | None:
    """The JSONL row for one converted row, its image written under `out/images/`; None when
    the row only added a question to an earlier record (prism)."""
    data = conv.image.read()
    try:
        ext = image_format(data)
    except Exception as e:  # PIL raises many types for corrupt data
        raise BadRow("image", f"not a decodable image ({e})") from None
    rid = conv.id if conv.id is not None else image_hash(data)
    if fmt == "prism" and rid in grouped:
        grouped[rid]["questions"] += conv.questions
        grouped[rid]["meta"]["source"]["questions"] += conv.meta["source"]["questions"]
        return None
    if rid in where:
        raise BadRow("id", f"duplicate id {rid!r} (first at {where[rid]})")
    where[rid] = at
    rel = f"images/{_file_name(rid)}.{ext}"
    (out / rel).write_bytes(data)
    row = {
        "id": rid,
        "image": rel,
        "questions": conv.questions,
        "captions": conv.captions,
        "meta": conv.meta | {"imported_from": at},
    }
    if fmt == "prism":
        grouped[rid] = row
        return None
    return row


def _write(row: dict, splits: dict, val_fraction: float, counts: dict) -> None:
    split = "val" if val_fraction > 0 and in_val(row["id"], val_fraction) else "train"
    splits[split].write(json.dumps(row, ensure_ascii=False) + "\n")
    counts[split] += 1
    counts["questions"] += len(row["questions"])
    counts["captions"] += len(row["captions"])


def cache_root() -> Path:
    return Path(os.environ.get("LIT_CAPRL_CACHE", Path.home() / ".cache" / "lit_caprl")).expanduser()


def cached_import(
    source: str | Path, fmt: Format, image_root: str | Path | None = None, skip_bad: bool = False
) -> Path:
    """The imported form of `source` (its `train.jsonl`), imported once into the cache
    (`$LIT_CAPRL_CACHE`, default `~/.cache/lit_caprl`) and reused while the inputs are
    unchanged (same paths, sizes and modification times), like the datasets library's cache."""
    files = input_files(source)
    stamp = [
        (str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else (str(f), 0, 0) for f in files
    ]  # a Hub id: keyed by its name (the datasets library caches its files)
    key = json.dumps([IMPORT_VERSION, fmt, stamp, str(image_root), skip_bad])
    name = Path(str(source).rstrip("/*")).stem
    out = cache_root() / "imports" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if not (out / "import.json").is_file():
        import_data(source, fmt, out, image_root, skip_bad=skip_bad)
    return out / "train.jsonl"
