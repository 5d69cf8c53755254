"""Where records come from: files in any supported format (`RecordReader`, what every
DataModule reads through), a ShapesWorld data set under a root (`ShapesRoot`), and what
`lit-caprl caption` reads and has written. Light (no torch), so a wrong `--in` is reported
before Lightning loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lit_caprl.data import shapes
from lit_caprl.data.importer import cached_import
from lit_caprl.data.schema import DataError, Record, load_records
from lit_caprl.errors import ConfigError, MissingPath

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def source_records(source: str | Path, fmt: str = "jsonl", image_root: str | None = None) -> list[Record]:
    """Records to caption: every image under a folder (id: its path relative to the folder), a
    JSONL in our schema, or any `lit-caprl data import` format."""
    path = Path(source)
    if path.is_dir() and fmt == "jsonl":
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingPath(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
        return [Record(str(f.relative_to(path)), f.resolve(), (), source=str(f)) for f in files]
    jsonl = path if fmt == "jsonl" else cached_import(source, fmt, image_root)
    return load_records(jsonl)[0]


def written_ids(out: Path) -> set[str]:
    """Ids already captioned in `out` and its rank parts. A last line without its newline (the
    job was killed while writing it) is cut off, so that image is captioned again."""
    done: set[str] = set()
    for part in [out, *sorted(out.parent.glob(f"{out.name}.rank*"))]:
        if not part.is_file():
            continue
        data = part.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with open(part, "r+b") as f:
                f.truncate(len(data))
        done |= {json.loads(line)["id"] for line in data.decode("utf-8").splitlines()}
    return done


SourceFormat = Literal["jsonl", "caprl-qa", "verl", "captions", "prism"]


@dataclass
class RecordReader:
    """Reads records from a source in `format` and keeps the bad ones it was told to skip.

    `jsonl` is our schema (see `schema.py`); `caprl-qa`, `verl`, `captions` and `prism` (a
    parquet file, a directory or glob of shards, .json/.jsonl, a `datasets` directory) go
    through the importer of `lit-caprl data import`, once, into a cache reused while the inputs
    are unchanged (`image_root` resolves relative image paths). `on_bad_record="error"` stops
    at load time on any bad record, naming file, line (or row) and field; "skip" drops bad
    records but lists them in `skipped` and warns, so nothing is lost silently."""

    format: SourceFormat = "jsonl"
    image_root: str | None = None
    on_bad_record: Literal["error", "skip"] = "error"
    skipped: list[str] = field(default_factory=list)

    def jsonl(self, source: str) -> Path:
        """The source as our JSONL (imported on first use)."""
        if self.format == "jsonl":
            return Path(source)
        return cached_import(source, self.format, self.image_root, skip_bad=self.on_bad_record == "skip")

    def load(self, source: str) -> list[Record]:
        jsonl = self.jsonl(source)
        try:
            records, problems = load_records(jsonl, self.on_bad_record)
        except DataError as e:
            if self.on_bad_record == "skip":  # nothing good was left
                raise
            hint = "(data.init_args.on_bad_record: skip trains without such records, counting and listing them)"
            raise DataError(e.problems, hint) from None
        skipped = [str(p) for p in problems]
        if jsonl != Path(source):  # rows the import skipped
            skipped = json.loads((jsonl.parent / "import.json").read_text())["skipped_rows"] + skipped
        self.skip(skipped)
        return records

    def skip(self, problems: list[str]) -> None:
        """Count and warn about records left out (an error instead, unless `on_bad_record="skip"`)."""
        if problems:
            self.skipped += problems
            from lightning.pytorch.utilities import rank_zero_warn  # light module: Lightning loads on use

            rank_zero_warn(self.summary(problems))

    def summary(self, problems: list[str] | None = None) -> str:
        problems = self.skipped if problems is None else problems
        shown = "\n".join(problems[:10])
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        return f"skipped {len(problems)} bad records (on_bad_record=skip):\n{shown}{more}"


@dataclass
class ShapesRoot:
    """A ShapesWorld data set under `root`, written by `prepare` when missing only if
    `generate` (like `download=True` elsewhere): a mistyped path must not silently train on
    fresh data."""

    root: Path
    n_train: int
    n_val: int
    seed: int
    generate: bool = False

    def prepare(self) -> None:
        if (self.root / "train.jsonl").is_file():
            return
        if not self.generate:
            raise ConfigError(
                f"data.init_args.root: {self.root} holds no ShapesWorld data set (train.jsonl); write "
                f"one with `lit-caprl data shapes --out {self.root}`, or set generate: true"
            )
        shapes.write_dataset(self.root, self.n_train, self.n_val, self.seed)

    def split(self, name: str) -> str:
        return str(self.root / f"{name}.jsonl")
