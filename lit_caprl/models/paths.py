"""Where a model comes from: a local directory or a Hub id. Light (no torch), so config checks
run before anything heavy is imported."""

from __future__ import annotations

import re
from pathlib import Path

from lit_caprl.errors import MissingPath

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve(name_or_path: str) -> str:
    """A local directory, or a Hub id (`owner/name`). A missing local path is an error, never
    silently replaced by something else."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise MissingPath(f"model path {name_or_path!r} is a file; expected a save_pretrained directory")
    if _HUB_ID.fullmatch(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return name_or_path
    raise MissingPath(
        f"model directory {name_or_path!r} does not exist (resolved to {path.resolve()}); "
        "build one with `lit-caprl make-tiny` or give a Hub id like Qwen/Qwen2.5-VL-3B-Instruct"
    )
