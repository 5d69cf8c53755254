"""Benchmarks are not tests: this only checks that each one runs in --quick mode. Opt-in
(`pytest -m bench`): they take minutes and assert little beyond their output's shape."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[1]


def test_reader_reward_benchmark_quick(tmp_path):
    out = tmp_path / "rr.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/reader_reward.py"), "--quick", "--out", str(out)],
        check=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert {"logprob_qps", "sample_qps", "ratio", "logprob_std", "sample_std"} <= result.keys()
    assert result["logprob_std"] == 0.0
    assert result["environment"]["versions"]["transformers"] and result["environment"]["cpus"] >= 1


def test_reader_reward_length_sweep_quick(tmp_path):
    out = tmp_path / "rr.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/reader_reward.py"),
            "--quick",
            "--caption-words",
            "8",
            "32",
            "--out",
            str(out),
        ],
        check=True,
        timeout=300,
    )
    rows = json.loads(out.read_text())["lengths"]
    assert [r["caption_words"] for r in rows] == [8, 32]
    assert rows[0]["prompt_tokens"] < rows[1]["prompt_tokens"]
    for r in rows:
        assert r["logprob_qps"] > 0 and r["sample_1_token_qps"] > 0 and r["sample_10_tokens_qps"] > 0


def test_grpo_vs_trl_benchmark_quick(tmp_path):
    out = tmp_path / "g.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/grpo_vs_trl.py"), "--quick", "--out", str(out)], check=True, timeout=600
    )
    entry = json.loads(out.read_text())["results"][0]
    for key in (
        "lit_caprl_completions_per_s",
        "trl_completions_per_s",
        "ratio",
        "lit_caprl_peak_rss_mb",
        "trl_peak_rss_mb",
        "floor_step_s",
    ):
        assert entry[key] > 0, key
    parts = entry["floor_parts_s"]  # 4x8, beta 0.04: a reference pass is part of the floor
    assert set(parts) == {"generation", "reference", "update"} and min(parts.values()) > 0
    assert entry["floor_step_s"] == pytest.approx(sum(parts.values()))
    assert entry["max_ratio"] == pytest.approx(entry["trl_step_s"] / entry["floor_step_s"])


def test_sft_dpo_vs_trl_benchmark_quick(tmp_path):
    out = tmp_path / "sd.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sft_dpo_vs_trl.py"), "--quick", "--out", str(out)],
        check=True,
        timeout=900,
    )
    result = json.loads(out.read_text())
    assert [e["stage"] for e in result["results"]] == ["sft", "dpo"]
    for entry in result["results"]:
        unit = entry["unit"]
        for key in (f"lit_caprl_{unit}_per_s", f"trl_{unit}_per_s", "lit_caprl_peak_rss_mb", "trl_peak_rss_mb"):
            assert entry[key] > 0, key
        assert entry["ratio"] == pytest.approx(entry["trl_step_s"] / entry["lit_caprl_step_s"])
        parts = entry["floor_parts_s"]  # DPO's floor has its reference forward, SFT's none
        assert set(parts) == ({"reference", "update"} if entry["stage"] == "dpo" else {"update"})
        assert entry["floor_step_s"] == pytest.approx(sum(parts.values())) and min(parts.values()) > 0
        assert entry["max_ratio"] == pytest.approx(entry["trl_step_s"] / entry["floor_step_s"])
    assert result["settings"]["trl_settings"] == {"bf16": False, "gradient_checkpointing": False}


def test_scaling_benchmark_quick(tmp_path):
    out = tmp_path / "s.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/scaling.py"), "--quick", "--out", str(out)], check=True, timeout=600
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["g"] for r in rows] == [2, 4]
    for r in rows:
        assert r["step_s"] > r["generation_s"] > 0 and r["update_s"] > 0 and 0 < r["vision_share"] < 1
    assert out.with_suffix(".png").stat().st_size > 0


def test_import_throughput_benchmark_quick(tmp_path):
    out = tmp_path / "i.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/import_throughput.py"), "--quick", "--out", str(out)],
        check=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert [r["rows"] for r in result["results"]] == [200, 600]
    assert all(r["rows_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in result["results"])
    assert result["environment"]["versions"]["pyarrow"]
