"""What `lit-caprl caption` reads and has written; light (no torch), so a wrong `--in` is
reported before Lightning loads."""

from __future__ import annotations

import json
from pathlib import Path

from lit_caprl.data.importer import cached_import
from lit_caprl.data.schema import Record, load_records
from lit_caprl.errors import MissingPath

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
