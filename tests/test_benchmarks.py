"""The benchmark scripts run end to end (demo preset: a reduced T5) and report consistent figures.

Timing goals are not asserted here: the scripts print them. These runs keep the scripts from rotting, so that
a session with a GPU spends its device time measuring rather than fixing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import T5_SMALL

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_train_throughput_reports_both_tasks(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("train_throughput.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
                     str(T5_SMALL.parent), "--workdir", str(tmp_path), "--batch-size", "4", "--warmup", "0",
                     "--steps", "2", "--json", str(tmp_path / "figures.json"))
    rows = json.loads((tmp_path / "figures.json").read_text())
    assert [(r["task"], r["device"]) for r in rows] == [("sequential", "cpu (fp32)"), ("direct", "cpu (fp32)")]
    for row in rows:
        assert row["min_s"] <= row["s_per_step"] <= row["max_s"] and row["peak_mib"] > 0
        assert row["samples_per_s"] == pytest.approx(4 / row["s_per_step"])
        assert row["speedup_vs_paper"] is None  # the authors' figures are for full t5-small at batch 16
    sequential, direct = rows
    assert direct["padded_length"] > 300 > 50 > sequential["padded_length"]  # 100 candidates vs 20 history items
    assert direct["propagation_s"] > 0 == sequential["propagation_s"]
    assert "alternating" in out and "t5-small (reduced) random init" in out


@pytest.mark.slow
def test_eval_throughput_reports_every_mode(tmp_path: Path, real_mirror: Path) -> None:
    run_script("eval_throughput.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
               str(T5_SMALL.parent), "--users", "3", "--batch-size", "2", "--device", "cpu",
               "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu" and figures["users"] == 3
    modes = ["direct/score", "direct/beam", "sequential/constrained", "sequential/rerank"]
    assert sorted(figures["users_per_s"]) == sorted(modes) and all(v > 0 for v in figures["users_per_s"].values())
