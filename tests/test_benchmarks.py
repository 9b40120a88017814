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
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from elmrec.config import ModelSettings
from elmrec.memory import RELEASE_EVERY
from elmrec.pretrained import load_t5
from tests.conftest import T5_SMALL

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, without: tuple[str, ...] = ()) -> str:
    """The script's stdout; `without`: packages it must run without (importing one fails, as where none is
    installed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(BENCHMARKS / name)
    command = [sys.executable, script, *args] if not without else [
        sys.executable, "-c", f"import runpy, sys; sys.modules.update(dict.fromkeys({list(without)!r})); "
        f"sys.argv = {[script, *args]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_train_throughput_reports_both_tasks_against_stock_t5(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("train_throughput.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
                     str(T5_SMALL.parent), "--workdir", str(tmp_path), "--batch-size", "4", "--warmup", "0",
                     "--steps", "2", "--cpu-bf16", "--authors", "--json", str(tmp_path / "figures.json"))
    rows = json.loads((tmp_path / "figures.json").read_text())
    assert [(r["task"], r["device"]) for r in rows] == [
        ("sequential", "cpu (fp32)"), ("direct", "cpu (fp32)"),
        ("sequential", "cpu (bf16 autocast)"), ("direct", "cpu (bf16 autocast)")]
    for fp32, bf16 in zip(rows[:2], rows[2:], strict=True):  # the same turns: stock fp32 is timed once per task
        assert fp32["stock_fp32_s_per_step"] == bf16["stock_fp32_s_per_step"] == fp32["stock_s_per_step"]
    assert "stock T5 in fp32 / ours:" in out and "authors' stand-in (fp32) / ours:" in out
    assert len({row["authors_s_per_step"] for row in rows}) == 2  # one per task, in the same turns as the rest
    for row in rows:
        assert row["min_s"] <= row["s_per_step"] <= row["max_s"] and row["peak_mib"] > 0
        assert row["stock_min_s"] <= row["stock_s_per_step"] <= row["stock_max_s"] and row["stock_peak_mib"] > 0
        assert row["samples_per_s"] == pytest.approx(4 / row["s_per_step"])
        assert row["ratio_vs_stock"] == pytest.approx(row["s_per_step"] / row["stock_s_per_step"])
        assert row["timed_steps"] == 2 and row["tflop_per_step"] > 0
        assert "speedup_vs_paper" not in row  # no division by figures measured elsewhere
    sequential, direct = rows[:2]
    assert direct["padded_length"] > 300 > 50 > sequential["padded_length"]  # 100 candidates vs 20 history items
    assert direct["propagation_s"] > 0 == sequential["propagation_s"] == sequential["lightgcn_share"]
    assert direct["lightgcn_share"] == pytest.approx(direct["propagation_s"] / direct["s_per_step"])
    assert "alternating" in out and "ours/stock" in out and "t5-small (reduced) random init" in out


@pytest.mark.slow
def test_heap_times_both_heaps_in_fresh_processes(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("heap.py", "--rounds", "1", "--json", str(tmp_path / "heap.json"), "--preset", "demo",
                     "--mirror", str(real_mirror), "--model-mirror", str(T5_SMALL.parent), "--workdir", str(tmp_path),
                     "--batch-size", "4", "--warmup", "0", "--steps", "1")
    figures = json.loads((tmp_path / "heap.json").read_text())
    lines = figures["lines"]
    assert figures["as_shipped"] == []  # no --authors
    assert [(line["task"], line["contestant"]) for line in lines] == [
        ("sequential", "ours"), ("sequential", "stock T5"), ("direct", "ours"), ("direct", "stock T5")]
    for line in lines:
        assert line["system_over_reuse"] == pytest.approx(line["system_s_per_step"] / line["reuse_s_per_step"])
        assert line["system_peak_mib"] > 0 and line["reuse_peak_mib"] > 0
    assert "round 1/1, heap system" in out and "round 1/1, heap reuse" in out and "system/reuse" in out


@pytest.mark.slow
def test_heap_growth_records_every_pair_in_one_process_per_heap(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("heap_growth.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
                     str(T5_SMALL.parent), "--workdir", str(tmp_path), "--batch-size", "4", "--pairs", "2",
                     "--json", str(tmp_path / "growth.json"))
    figures = json.loads((tmp_path / "growth.json").read_text())
    assert [(run["heap"], run["reused"], run["release_every"]) for run in figures["runs"]] == [
        ("reuse", True, RELEASE_EVERY), ("keep", True, 0), ("system", False, 0)]
    for run, line in zip(figures["runs"], figures["summaries"], strict=True):
        assert len(run["rss_mib"]) == 2 and min(run["rss_mib"]) > 100  # a process with a T5 loaded
        assert all(peak >= rss for peak, rss in zip(run["peak_mib"], run["rss_mib"], strict=True))
        assert [len(run[key][task]) for key in ("seconds", "padded_length") for task in ("sequential", "direct")] == [
            2, 2, 2, 2]
        assert max(run["padded_length"]["sequential"]) < 50 < 300 < min(run["padded_length"]["direct"])
        assert line["max_rss_mib"] == max(run["rss_mib"]) and line["peak_mib"] == max(run["peak_mib"])
        assert line["records"] == 2 and (run["stage"], run["unit"]) == ("train", "pair of steps")
    assert all(f"heap {heap}, pair 2/2" in out for heap in ("reuse", "keep", "system")) and "second half" in out


@pytest.mark.slow
def test_heap_growth_of_an_evaluation_records_every_batch_task_by_task(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("heap_growth.py", "--stage", "eval", "--preset", "demo", "--mirror", str(real_mirror),
                     "--model-mirror", str(T5_SMALL.parent), "--workdir", str(tmp_path), "--batch-size", "3",
                     "--pairs", "2", "--heaps", "reuse,system", "--json", str(tmp_path / "growth.json"))
    figures = json.loads((tmp_path / "growth.json").read_text())
    assert [(run["heap"], run["stage"], run["reused"]) for run in figures["runs"]] == [
        ("reuse", "eval", True), ("system", "eval", False)]
    for run in figures["runs"]:
        assert run["record_task"] == ["sequential", "sequential", "direct", "direct"]  # evaluation's order
        assert run["batch_users"] == 3 and len(run["rss_mib"]) == len(run["peak_mib"]) == 4
        assert [len(run["seconds"][task]) for task in ("sequential", "direct")] == [2, 2]
        assert max(run["padded_length"]["sequential"]) < 100 < 300 < min(run["padded_length"]["direct"])
    assert [(line["heap"], line["task"], line["records"]) for line in figures["summaries"]] == [
        ("reuse", "sequential", 2), ("reuse", "direct", 2), ("system", "sequential", 2), ("system", "direct", 2)]
    assert "heap system, direct batch 4/4" in out and "heap reuse, sequential: RSS" in out


def test_heap_growth_summary_finds_the_plateau() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from heap_growth import parts, summarize

    run = {"heap": "reuse", "rss_mib": [100.0, 180.0, 199.0, 200.0, 198.0, 200.0],
           "peak_mib": [150.0, 190.0, 205.0, 201.0, 199.0, 200.0],
           "seconds": {"sequential": [1.0, 0.5, 0.5, 0.5, 0.5, 0.5], "direct": [6.0, 4.0, 4.0, 4.0, 4.0, 4.0]}}
    assert parts(run) == [run]  # a training's pairs are summarized together
    assert summarize(run) == {"heap": "reuse", "records": 6, "first_rss_mib": 100.0, "max_rss_mib": 200.0,
                              "record_within_1pct_of_max": 3,  # 199 >= 198
                              "second_half_growth_mib": 1.0,  # 200 after pair 6 against 199 after pair 3
                              "peak_mib": 205.0,
                              "sequential_s_per_record": 3.5 / 6, "direct_s_per_record": 26.0 / 6}


def test_heap_growth_summarizes_an_evaluation_task_by_task() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from heap_growth import parts, summarize

    run = {"heap": "keep", "record_task": ["sequential"] * 3 + ["direct"] * 2,
           "rss_mib": [100.0, 110.0, 120.0, 300.0, 290.0], "peak_mib": [105.0, 115.0, 125.0, 350.0, 340.0],
           "seconds": {"sequential": [1.0, 2.0, 3.0], "direct": [5.0, 7.0]}}
    assert [summarize(part) for part in parts(run)] == [
        {"heap": "keep", "task": "sequential", "records": 3, "first_rss_mib": 100.0, "max_rss_mib": 120.0,
         "record_within_1pct_of_max": 3, "second_half_growth_mib": 20.0, "peak_mib": 125.0,
         "sequential_s_per_record": 2.0},
        {"heap": "keep", "task": "direct", "records": 2, "first_rss_mib": 300.0, "max_rss_mib": 300.0,
         "record_within_1pct_of_max": 1, "second_half_growth_mib": -10.0, "peak_mib": 350.0,
         "direct_s_per_record": 6.0}]


def throughput_row(task: str, device: str, ours: float, stock: float, authors: float) -> dict:
    """A row of train_throughput.py --json, as heap.py reads it (peaks: 10x the time, in MiB)."""
    return {"task": task, "device": device, "s_per_step": ours, "peak_mib": 10 * ours, "stock_s_per_step": stock,
            "stock_peak_mib": 10 * stock, "authors_s_per_step": authors, "authors_peak_mib": 10 * authors}


def test_heap_report_averages_rounds_and_compares_each_as_it_ships() -> None:
    """Two rounds per heap. The authors' stand-in (fp32) is in every precision's rows with the same time and is
    reported once; as shipped = the stand-in on the system heap / ours on the reused heap, over both tasks."""
    sys.path.insert(0, str(BENCHMARKS))
    from heap import as_shipped, report

    def rounds(ours: list[float], authors_direct: float) -> list[dict]:
        seq32, direct32, seq16, direct16 = ours
        return [throughput_row("sequential", "cpu (fp32)", seq32, 0.9, 1.2),
                throughput_row("direct", "cpu (fp32)", direct32, 11.0, authors_direct),
                throughput_row("sequential", "cpu (bf16 autocast)", seq16, 0.7, 1.2),
                throughput_row("direct", "cpu (bf16 autocast)", direct16, 8.0, authors_direct)]

    runs = {"system": [rounds([1.0, 12.0, 0.8, 9.0], 13.0), rounds([1.0, 14.0, 0.8, 9.0], 15.0)],
            "reuse": [rounds([0.8, 10.0, 0.5, 6.0], 11.0), rounds([0.8, 10.0, 0.5, 7.0], 11.0)]}
    lines = report(runs)
    assert [(line["task"], line["device"], line["contestant"]) for line in lines] == [
        ("sequential", "cpu (fp32)", "ours"), ("sequential", "cpu (fp32)", "stock T5"),
        ("sequential", "cpu (fp32)", "authors' stand-in"),
        ("direct", "cpu (fp32)", "ours"), ("direct", "cpu (fp32)", "stock T5"),
        ("direct", "cpu (fp32)", "authors' stand-in"),
        ("sequential", "cpu (bf16 autocast)", "ours"), ("sequential", "cpu (bf16 autocast)", "stock T5"),
        ("direct", "cpu (bf16 autocast)", "ours"), ("direct", "cpu (bf16 autocast)", "stock T5")]
    direct32 = lines[3]
    assert (direct32["system_s_per_step"], direct32["reuse_s_per_step"]) == (13.0, 10.0)
    assert direct32["system_over_reuse"] == 1.3 and (direct32["system_peak_mib"], direct32["reuse_peak_mib"]) == (
        140.0, 100.0)  # the larger round's peak
    assert (lines[5]["system_s_per_step"], lines[5]["reuse_s_per_step"]) == (14.0, 11.0)
    shipped = as_shipped(lines)
    assert [(s["ours"], s["authors_system_s_per_pair"], s["ours_reuse_s_per_pair"]) for s in shipped] == [
        ("cpu (fp32)", 1.2 + 14.0, 0.8 + 10.0), ("cpu (bf16 autocast)", 1.2 + 14.0, 0.5 + 6.5)]
    assert [s["authors_over_ours"] for s in shipped] == pytest.approx([15.2 / 10.8, 15.2 / 7.0])
    assert as_shipped([line for line in lines if line["contestant"] != "authors' stand-in"]) == []


def test_t5_flop_count_matches_a_hand_count() -> None:
    """One encoder and one decoder layer, d = h = 2, d_ff = 4, vocabulary 10, batch 1, 3 encoder / 2 decoder
    tokens. Multiply-adds: encoder 3 x (4*2*2 + 2*2*4) + 2*3*3*2 = 132; decoder 2 x (6*2*2 + 2*2*4) + 3 x 2*2*2
    + 2*2*(2+3)*2 = 144; LM head 2 x 2*10 = 40. Training FLOPs: 3 x 2 x 316."""
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import t5_train_flops

    config = SimpleNamespace(d_model=2, num_heads=1, d_kv=2, d_ff=4, vocab_size=10, num_layers=1,
                             num_decoder_layers=1, is_gated_act=False)
    assert t5_train_flops(config, 1, 3, 2) == 6 * 316


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section(tmp_path: Path, real_mirror: Path) -> None:
    report_path = tmp_path / "gpu_check.json"
    run_script("gpu_check.py", "--smoke", "--mirror", str(real_mirror), "--model-mirror", str(T5_SMALL.parent),
               "--workdir", str(tmp_path / "work"), "--json", str(report_path),
               without=("prefect", "mlflow"))  # the GPU machine has neither
    report = json.loads(report_path.read_text())
    assert report["meta"]["smoke"] is True and set(report["meta"]["budgets_s"]) == set(report["sections"])
    sections = report["sections"]
    assert list(sections) == ["train_throughput", "eval_throughput", "paper_p5", "paper_shuffled", "attention",
                              "classic", "compile"]
    failed = {name: s.get("error") for name, s in sections.items() if not s["ok"]}
    assert not failed, failed
    rows = sections["train_throughput"]["rows"]
    assert [(r["task"], r["precision"]) for r in rows] == [
        ("sequential", "cpu (fp32)"), ("direct", "cpu (fp32)"),
        ("sequential", "cpu (bf16 autocast)"), ("direct", "cpu (bf16 autocast)")]
    for row in rows:
        assert {"samples_per_s", "peak_memory_mib", "tflop_per_step", "achieved_tflops", "mfu", "peak_used"} <= set(row)
        assert row["mfu"] is None  # no peak is claimed for a CPU
        fp32 = row["precision"] == "cpu (fp32)"  # the authors' stand-in runs in fp32, as their code
        assert ("authors_s_per_step" in row) == fp32 and (not fp32 or row["authors_over_ours"] == pytest.approx(
            row["authors_s_per_step"] / row["s_per_step"]))
    decoders = {"direct/score", "direct/beam", "sequential/constrained", "sequential/rerank"}
    evaluation = sections["eval_throughput"]  # each decoder in fp32 and in bf16, the same users
    assert set(evaluation["users_per_s"]) == set(evaluation["bf16_users_per_s"]) == set(evaluation["agreement"]) \
        == decoders
    for name in decoders:
        fp32, bf16, alike = evaluation["users_per_s"][name], evaluation["bf16_users_per_s"][name], \
            evaluation["agreement"][name]
        assert evaluation["decoders"][name]["users"] == evaluation["bf16_decoders"][name]["users"]
        assert evaluation["bf16_speedup"][name] == bf16 / fp32
        assert 0 <= alike["identical_top10"] <= alike["mean_overlap@10"] <= 1
    for scheme in ("p5", "shuffled"):
        paper = sections[f"paper_{scheme}"]
        assert paper["id_scheme"] == scheme and paper["train"]["epochs"] and paper["train"]["best_epoch"] == 1
        assert set(paper["metrics"]) == {"sequential", "direct"}
        assert {"hr@5", "hr@10", "ndcg@10", "n_users"} <= set(paper["metrics"]["direct"]["score"])
        assert paper["metrics"]["direct"]["score"]["n_users"] == paper["test_users"] == 20
        assert set(paper["baselines"]) == {"popularity", "random", "id_order"}
        bf16 = paper["bf16"]  # the same checkpoint evaluated in bf16 (20 users: seconds on a CPU)
        assert set(bf16["metrics"]) == {"sequential", "direct"} and bf16["metrics"]["direct"]["score"]["n_users"] == 20
        assert list(bf16["agreement"]) == ["sequential_constrained", "direct_score"]
        assert bf16["speedup"] == pytest.approx(paper["eval_seconds"] / bf16["eval_seconds"])
        assert report["summary"][scheme]["hr@10"]["direct/score bf16"] == bf16["metrics"]["direct"]["score"]["hr@10"]
        assert set(report["summary"][scheme]["hr@10"]) >= {"direct/score", "sequential/constrained",
                                                           "id_order:direct", "popularity:sequential"}
    attention = sections["attention"]  # SDPA against eager attention on the same direct batches, bf16
    assert attention["task"] == "direct" and attention["precision"] == "cpu (bf16 autocast)"
    assert attention["sdpa"]["timed_steps"] >= 1 and attention["eager"]["timed_steps"] >= 1
    assert attention["speedup_vs_sdpa"] == attention["sdpa"]["s_per_step"] / attention["eager"]["s_per_step"]
    for name in ("sasrec", "lightgcn"):  # one epoch each on the CPU, tested on the 20 test users
        classic = sections["classic"][name]
        assert classic["device"] == "cpu (fp32)" and classic["epochs"] == 1 and classic["test_users"] == 20
        assert len(classic["s_per_epoch"]) == 1 and set(classic["hr@10"]) == {"direct", "sequential"}
    assert sections["compile"]["skipped"] == "with --smoke"  # compiling on a small CPU takes minutes


@pytest.mark.slow
def test_eval_throughput_reports_every_mode(tmp_path: Path, real_mirror: Path) -> None:
    run_script("eval_throughput.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
               str(T5_SMALL.parent), "--users", "3", "--batch-size", "2", "--device", "cpu",
               "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu" and figures["users"] == 3
    assert figures["heap"] == f"reused heap, released every {RELEASE_EVERY} batches"  # as an evaluation ranks
    modes = ["direct/score", "direct/beam", "sequential/constrained", "sequential/rerank"]
    assert sorted(figures["users_per_s"]) == sorted(modes) and all(v > 0 for v in figures["users_per_s"].values())
    assert figures["agreement"] == {}  # one precision: nothing to compare
    out = run_script("eval_throughput.py", "--preset", "demo", "--mirror", str(real_mirror), "--model-mirror",
                     str(T5_SMALL.parent), "--users", "3", "--batch-size", "2", "--device", "cpu",
                     "--modes", "direct/score,sequential/constrained", "--precisions", "fp32,bf16",
                     "--malloc", "system", "--json", str(tmp_path / "both.json"))
    both = json.loads((tmp_path / "both.json").read_text())
    assert both["heap"] == "glibc's default heap"
    assert list(both["users_per_s"]) == ["direct/score fp32", "direct/score bf16",  # the order alternates
                                         "sequential/constrained bf16", "sequential/constrained fp32"]
    assert list(both["agreement"]) == ["direct/score", "sequential/constrained"]
    for agreement in both["agreement"].values():
        assert 0 <= agreement["identical_top10"] <= agreement["mean_overlap@10"] <= 1
    assert "direct/score: bf16" in out and "the users/s of fp32" in out


def test_top10_agreement_of_two_rankings_by_hand() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from eval_precision import agreement

    fp32 = np.array([[*range(1, 11), 99], [*range(11, 21), 98]])  # an 11th slot: not compared
    bf16 = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 10, 9, 97],  # two swapped
                     [30, *range(11, 20), -1]])  # one item in front, the last pushed out
    assert agreement(fp32, fp32) == {"identical_top10": 1.0, "mean_overlap@10": 1.0, "same_first": 1.0}
    assert agreement(fp32, bf16) == {"identical_top10": 0.0, "mean_overlap@10": pytest.approx(0.95),
                                     "same_first": 0.5}  # 10/10 and 9/10 items shared
    assert agreement(fp32, np.array([[*range(1, 11), 0], [*range(11, 21), 0]]))["identical_top10"] == 1.0
    empty = np.zeros((2, 0), dtype=int)  # every output invalid: no slot at all
    assert agreement(empty, np.full((2, 3), -1)) == {"identical_top10": 1.0, "mean_overlap@10": 1.0,
                                                     "same_first": 1.0}  # ten empty slots each
    half = np.array([[1, 2, 3, 4, 5], [11, 12, 13, 14, 15]])  # 5 items, then 5 empty slots
    assert agreement(half, fp32)["mean_overlap@10"] == pytest.approx(0.5)


@pytest.mark.slow
def test_eval_precision_smoke_ranks_one_checkpoint_in_both_precisions(tmp_path: Path, real_mirror: Path) -> None:
    args = ["--smoke", "--mirror", str(real_mirror), "--model-mirror", str(T5_SMALL.parent), "--workdir",
            str(tmp_path / "work"), "--users", "12"]
    out = run_script("eval_precision.py", *args, "--json", str(tmp_path / "first.json"))
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["preset"] == "demo (smoke)" and first["train_seconds"] > 0 and "training: " in out
    assert [len(first["seconds"][p]) for p in ("fp32", "bf16")] == [2, 2]
    assert set(first["metrics"]["bf16"]) == set(first["metrics"]["fp32"]) == {"sequential", "direct"}
    assert first["metrics"]["bf16"]["direct"]["score"]["n_users"] == 12
    assert list(first["agreement"]) == ["sequential_constrained", "direct_score"]
    row = next(r for r in first["comparison"] if r["name"] == "direct/score hr@10")
    assert (row["fp32"], row["bf16"]) == (first["metrics"]["fp32"]["direct"]["score"]["hr@10"],
                                          first["metrics"]["bf16"]["direct"]["score"]["hr@10"])
    assert len(list((tmp_path / "work").rglob("eval-*/test/metrics.json"))) == 2  # one folder per precision
    run_script("eval_precision.py", *args, "--rounds", "1", "--json", str(tmp_path / "again.json"))
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["train_seconds"] is None  # the finished training of the work dir is reused
    assert again["metrics"] == first["metrics"]  # same checkpoint, same users: the same figures
    run_script("eval_precision.py", *args, "--rounds", "1", "--decoders", "paper", "--json",
               str(tmp_path / "paper.json"))
    paper = json.loads((tmp_path / "paper.json").read_text())
    assert paper["decoders"] == "paper" and paper["train_seconds"] is None
    assert list(paper["agreement"]) == ["sequential_constrained", "sequential_rerank", "direct_score", "direct_beam"]
    default = {"direct": "score", "sequential": "constrained"}
    for precision in ("fp32", "bf16"):  # the default decoders beside the paper's rank as they did alone
        alone = {task: {default[task]: by_decoder[default[task]]}
                 for task, by_decoder in paper["metrics"][precision].items()}
        assert alone == first["metrics"][precision]


@pytest.mark.slow
def test_precision_check_smoke_compares_both_precisions(tmp_path: Path, real_mirror: Path) -> None:
    out = run_script("precision_check.py", "--smoke", "--mirror", str(real_mirror), "--model-mirror",
                     str(T5_SMALL.parent), "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "p.json"),
                     "--control", "--seed", "7")
    figures = json.loads((tmp_path / "p.json").read_text())
    assert set(figures["runs"]) == {"fp32", "bf16", "control"} and isinstance(figures["cpu_supports_bf16"], bool)
    assert list((tmp_path / "work" / "beauty").glob("p5-seed7-u100-*"))  # --seed reached the runs' settings
    assert [figures["runs"][p]["device"] for p in ("fp32", "bf16", "control")] == [
        "cpu (fp32)", "cpu (bf16 autocast)", "cpu (fp32)"]
    control = figures["control_comparison"]  # fp32 against fp32 with lr x (1 + 1e-6), row by row
    assert [row["name"] for row in control] == [row["name"] for row in figures["comparison"]]
    assert control[0]["bf16"] == figures["runs"]["control"]["best_valid_loss"]  # the column holds the control's
    assert "control, fp32 with lr x 1.000001" in out
    names = [row["name"] for row in figures["comparison"]]
    assert names[0] == "best validation loss"
    assert {"direct/score hr@10", "sequential/constrained ndcg@5"} <= set(names)
    assert figures["within_tolerance"] == all(row["within"] for row in figures["comparison"])
    floor = {row["name"]: row for row in figures["noise_floor"]}  # the noise-floor rule's rows
    assert list(floor) == ["best validation loss", "direct/score hr@10", "direct/score ndcg@10"]
    assert floor["best validation loss"]["allowed"] == 0.01
    by_name = {row["name"]: row for row in control}
    for name in ("direct/score hr@10", "direct/score ndcg@10"):
        assert floor[name]["control"] == by_name[name]["relative"]
        assert floor[name]["allowed"] == max(0.01, 2 * by_name[name]["relative"])
    assert figures["noise_floor_within"] == all(row["within"] for row in floor.values())
    assert "noise-floor rule" in out and "verdict:" in out


def test_softmax_loss_benchmark_times_both_losses() -> None:
    out = run_script("softmax_loss.py", "--positions", "8", "--items", "50", "--dim", "4", "--chunk", "16",
                     "--rounds", "2")
    assert out.startswith("8 positions x 50 items, d 4, chunk 16;")
    assert "plain" in out and "chunked is" in out and "x faster" in out


def test_propagation_benchmark_times_both_products() -> None:
    out = run_script("propagation.py", "--users", "30", "--items", "20", "--per-user", "3", "--dim", "8",
                     "--layers", "2", "--rounds", "2")
    assert out.startswith("51 nodes, ")
    assert "coo" in out and "csr is" in out and "largest gradient difference" in out
    gap = float(out.rsplit("largest gradient difference ", 1)[1])
    assert gap < 1e-5  # the two products give the same gradient


def test_the_authors_stand_in_computes_elmrec_loss() -> None:
    """The stand-in of the authors' step is the same function as ELMRec once it has ELMRec's weights (their
    incremental row 0, which ELMRec keeps at zero, set to zero): its time is the time of the same work."""
    sys.path.insert(0, str(BENCHMARKS))
    from authors_standin import TASK_INDEX, AuthorsStandIn

    from tests.test_model import BOTH, N_ITEMS, N_USERS, TINY, batch, make, normalised_adjacency

    t5, _ = load_t5(ModelSettings(model_name=str(T5_SMALL), reduced=TINY))
    ours = make(t5.config)
    theirs = AuthorsStandIn(ours.t5, sp.csr_matrix(normalised_adjacency()), alpha=2.0, sigma=0.5, n_layers=2,
                            prompt_num=3).eval()
    assert theirs.node_table.num_embeddings == N_USERS + N_ITEMS + 1
    with torch.no_grad():
        theirs.node_table.weight.copy_(ours.node_table.weight)
        theirs.incremental_table.weight.zero_()
        theirs.incremental_table.weight[:ours.incremental_table.num_embeddings] = ours.incremental_table.weight
        theirs.incremental_table.weight[0] = 0.0
        for task in BOTH:
            theirs.prompts.weight[TASK_INDEX[task] * 3:TASK_INDEX[task] * 3 + 3] = ours.prompts[task.value]
    input_ids, ww_ids, mask, labels = batch([[1, 1, 2, 0], [4, 4, 5, 0]])
    for task in BOTH:
        expected = ours(input_ids, ww_ids, mask, task, labels=labels).loss
        assert theirs(input_ids, ww_ids, mask, task, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(theirs.graph_table(), ours.node_embeddings(), atol=1e-6)


def test_matmul_precision_times_each_product_in_both_precisions(tmp_path: Path) -> None:
    out = run_script("matmul_precision.py", "--repeats", "1", "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    products = figures["products"]
    assert len(products) == 4 and all(line.startswith(name) for name, line in zip(products, out.splitlines()[1:]))
    for name, row in products.items():  # e.g. "feed-forward in 6560x512 . 512x2048": m x k . k x n
        (m, k), (_, n) = (map(int, name.split()[-3].split("x"))), (map(int, name.split()[-1].split("x")))
        assert row["bf16_over_fp32"] == pytest.approx(row["bf16_ms"] / row["fp32_ms"])
        assert row["fp32_gflops"] == pytest.approx(2 * m * k * n / row["fp32_ms"] / 1e6)
    assert isinstance(figures["cpu_has_bf16_tiles"], bool) and figures["threads"] == 1
    assert "is the faster precision here" in out.splitlines()[-1]
