"""Rows of the inputs users import: a `.parquet` file (streamed a batch at a time), `.json`,
`.jsonl`, a directory or glob of those, a `datasets` directory saved with `save_to_disk`, or
a Hugging Face Hub id. Each row comes with its 1-based row or line number, so every error
names where it is."""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator
from pathlib import Path

from lit_caprl.errors import MissingPath


class BadRow(ValueError):
    """A row that cannot become a record; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")


def hub_id(source: str | Path) -> bool:
    """`owner/name` (optionally `:split`) that is not a local path: a Hugging Face Hub data set."""
    return not Path(source).expanduser().exists() and _HUB_ID.fullmatch(str(source)) is not None


def input_files(source: str | Path) -> list[Path]:
    """The files behind `source`: a file, a glob, or a directory of .parquet/.json/.jsonl files
    (a `datasets` save_to_disk directory, or a Hub id, is returned as itself)."""
    path = Path(source).expanduser()
    if hub_id(source):
        return [Path(str(source))]
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return [path]
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".json", ".jsonl"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path)))
    if not files:
        raise MissingPath(f"no .parquet, .json or .jsonl input at {source}")
    return files


def count_rows(files: list[Path]) -> int | None:
    """Rows in the inputs when known without reading them (parquet metadata), for a progress bar."""
    import pyarrow.parquet as pq

    if all(f.suffix == ".parquet" for f in files):
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def read_rows(file: Path, batch_size: int = 64) -> Iterator[tuple[int, dict | BadRow]]:
    """(1-based row or line number, row) for each row of one input; a row that cannot even be
    parsed comes as a `BadRow`. Parquet is read a batch at a time, so memory stays flat."""
    if hub_id(file):
        yield from enumerate(_hub_rows(str(file)), start=1)
    elif file.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(file))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{file}: a DatasetDict; give one split's directory (e.g. {file}/train)")
        yield from enumerate(ds, start=1)
    elif file.suffix == ".parquet":
        import pyarrow.parquet as pq

        # One row group at a time, without pyarrow's pre-buffering (which fetches every row group
        # of the file up front: a 20,000-row shard of 50 KB images held 1 GB).
        parquet, n = pq.ParquetFile(file, pre_buffer=False), 0
        for group in range(parquet.metadata.num_row_groups):
            for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group]):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
    elif file.suffix == ".jsonl":
        with open(file, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield n, BadRow("record", f"not UTF-8 (byte {e.start} of the line)")
                    continue
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, BadRow("record", f"malformed JSON ({e.msg} at column {e.colno})")
    elif file.suffix == ".json":
        data = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{file}: a .json input must hold a list of rows (or {{'data': [...]}})")
        yield from enumerate(data, start=1)
    else:
        raise ValueError(f"{file}: unsupported input type {file.suffix!r} (.parquet, .json, .jsonl)")


def _hub_rows(source: str) -> Iterator[dict]:
    """A Hub data set's rows, streamed (`owner/name:split`, default split `train`)."""
    import datasets

    name, _, split = source.partition(":")
    try:
        return iter(datasets.load_dataset(name, split=split or "train", streaming=True))
    except Exception as e:  # offline, unknown id, no access: datasets raises many types
        raise MissingPath(
            f"{source!r} is neither a local path nor a reachable Hugging Face Hub data set ({type(e).__name__}: {e})"
        ) from e
