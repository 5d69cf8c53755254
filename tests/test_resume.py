"""Exact resume: a GRPO run killed with SIGKILL and resumed from `last.ckpt` continues with the
rewards and losses of the run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "grpo_resume.py"


def _run(tiny_models, data: str, root: Path, *extra: str) -> tuple[int, list[dict], str]:
    root.mkdir(parents=True, exist_ok=True)
    metrics = root / "metrics.jsonl"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--policy",
        tiny_models["qwen2_5_vl"],
        "--reader",
        tiny_models["qwen2"],
        "--data",
        data,
        "--root",
        str(root),
        "--metrics",
        str(metrics),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "LOCAL_RANK", "MASTER_"))}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return done.returncode, rows, done.stderr[-3000:]


def test_a_killed_grpo_run_resumes_exactly(tiny_models, shapes_root, tmp_path):
    code, straight, log = _run(tiny_models, shapes_root, tmp_path / "straight")
    assert code == 0, log
    assert [r["step"] for r in straight] == [1, 2, 3, 4, 5, 6]

    code, killed, log = _run(tiny_models, shapes_root, tmp_path / "killed", "--kill-at", "3")
    assert code == -signal.SIGKILL, log
    assert [r["step"] for r in killed] == [1, 2, 3]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    code, rows, log = _run(tiny_models, shapes_root, tmp_path / "killed", "--resume", str(last))
    assert code == 0, log
    resumed = rows[3:]  # step 3 died before its checkpoint was written: it is redone from step 2's
    assert [r["step"] for r in resumed] == [3, 4, 5, 6]
    for after in resumed:
        same = straight[after["step"] - 1]
        assert after["ids"] == same["ids"]  # the data position
        assert after["level"] == same["level"]  # the curriculum
        assert after["reward"] == pytest.approx(same["reward"], abs=1e-6)  # sampling and reward draws
        assert after["loss"] == pytest.approx(same["loss"], abs=1e-6)  # weights, optimizer, RNG
