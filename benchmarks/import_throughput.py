"""`lit-caprl data import` on CapRL-QA-75K-shaped parquet: rows/s and peak RSS by row count.

Writes a parquet of N rows with CapRL-QA-75K's columns and ~50 KB embedded images (a pool
of 64 distinct noise JPEG/PNGs, cycled, stored without dictionary or compression, so each
row carries its own copy of the bytes as distinct images would),
then imports it in a fresh process per size, so each peak RSS is that import's alone. Flat
memory means peak RSS does not grow with the row count.

    python benchmarks/import_throughput.py [--rows 2000 20000] [--out benchmarks/results/import_throughput.json]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment

COLUMNS = "id, image{bytes, path}, prompt, data_source, reward_model.ground_truth"


def _image_pool(n: int = 64) -> list[bytes]:
    """Noise images of ~50 KB: 128x128 PNG and 240x240 JPEG, alternating."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side, fmt = (128, "PNG") if i % 2 == 0 else (240, "JPEG")
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format=fmt, quality=90)
        out.append(buf.getvalue())
    return out


def write_parquet(path: Path, rows: int) -> float:
    """CapRL-QA-75K's columns, written in row groups of 500; returns the mean image size in KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = _image_pool()
    truth = [
        {
            "question": "Which city is mentioned in the company's address?",
            "choices": ["A) 北京市", "B) 上海市", "C) 惠州市", "D) 广州市"],
            "answer": "C",
        }
    ]
    prompt = [{"role": "user", "content": "<image> Please describe this image in detail."}]
    writer = None
    for start in range(0, rows, 500):
        batch = [
            {
                "id": f"row-{i}",
                "image": {"bytes": pool[i % len(pool)], "path": None},
                "prompt": prompt,
                "data_source": "image_caption_rl",
                "reward_model": {"ground_truth": truth},
            }
            for i in range(start, min(rows, start + 500))
        ]
        table = pa.Table.from_pylist(batch)
        # No dictionary and no compression: the pool's repeats would otherwise be stored once,
        # where the real data set's images are all distinct (and already compressed).
        writer = writer or pq.ParquetWriter(path, table.schema, use_dictionary=False, compression="none")
        writer.write_table(table)
    writer.close()
    return sum(map(len, pool)) / len(pool) / 1024


def _worker(parquet: str, out: str) -> None:
    from lit_caprl.data.importer import import_data

    start = time.perf_counter()
    report = import_data(parquet, "caprl-qa", out, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": report["rows"], "seconds": seconds, "peak_rss_mb": peak_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--out", default="benchmarks/results/import_throughput.json")
    p.add_argument("--quick", action="store_true", help="200 and 600 rows (a smoke run)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(*a.worker)
        return
    sizes = [200, 600] if a.quick else a.rows
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            parquet = Path(tmp) / f"caprl-qa-{n}.parquet"
            image_kb = write_parquet(parquet, n)
            done = subprocess.run(
                [sys.executable, __file__, "--worker", str(parquet), str(Path(tmp) / f"out-{n}")],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {
                "rows_per_s": row["rows"] / row["seconds"],
                "image_kb": image_kb,
                "parquet_mb": parquet.stat().st_size / 2**20,
            }
            results.append(row)
            print(json.dumps(row))
    payload = {
        "benchmark": "lit-caprl data import --format caprl-qa",
        "columns": COLUMNS,
        "environment": environment(),
        "results": results,
        "rss_ratio_largest_to_smallest": results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
