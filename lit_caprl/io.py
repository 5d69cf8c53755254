"""Atomic writes (a reader of `out` sees the old contents or the new, never half of them), and image links."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def remove_stale(out: Path) -> None:
    """Remove what killed writers of `out` left behind (`.NAME.tmp-PID`, `.NAME.old-PID` of
    processes that no longer run): a killed run's temp dir is cleaned at the next start."""
    for left in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = left.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old")) and pid.isdigit()) or _alive(int(pid)):
            continue
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(new: Path, out: Path) -> None:
    """Put the finished directory `new` in the place of `out` (a directory, a file or nothing)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(new, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def link_image(record, out_dir: Path) -> str:
    """Hard-link (or copy, across filesystems) a record's image into `out_dir/images/` and
    return its path relative to `out_dir`: derived data sets stay self-contained and pass the
    schema's rule that images live under the data file's folder."""
    rel = f"images/{record.id}{record.image.suffix}"
    dest = Path(out_dir) / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(record.image, dest)
        except OSError:
            shutil.copyfile(record.image, dest)
    return rel
