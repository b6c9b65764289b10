"""The benchmarks run end to end, check that their implementations agree before timing, show the spread of
every number and say when it is noise, and their official columns really run the official formulation."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ["-m", "gfsa.ops.bench.attention"]
IMPLS = {"sdpa", "fused", "materialized", "official"}


def test_attention_benchmark_fast(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, *SCRIPT, "--fast", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Forward+backward time" in proc.stdout and "Peak memory" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["implementations"]) == IMPLS
    assert [row["n"] for row in result["rows"]] == [32, 64]
    assert result["config"]["repeats"] == 1 and result["config"]["warmup"] == 1
    # One repetition: no spread to judge by. Said under the table and in the JSON.
    assert "warning: 1 repetition(s): no spread" in proc.stdout
    assert result["noise"]["meaningless"] is True and result["noise"]["spread_limit"] == 1.3
    for row in result["rows"]:
        assert set(row["impls"]) == IMPLS
        assert row["outputs_agree"] is True
        for name, cell in row["impls"].items():
            assert cell["skipped"] is None
            assert len(cell["times_ms"]) == 1 and cell["time_ms"] > 0
            assert cell["peak_mib"] > cell["extra_mib"] > 0  # inputs plus what the step allocated
            if name == "sdpa":
                assert cell["max_abs_diff"] is None  # plain attention is a different function
            else:
                assert cell["max_abs_diff"] <= 1e-4, name
        for key in ("fused_over_sdpa_time", "official_over_fused_time", "fused_over_sdpa_peak"):
            assert row["ratios"][key] > 0
        # The official column ran the official function: the agreement check, the call before the profiler,
        # the profiled call, then warm-up and timed repetitions.
        assert row["impls"]["official"]["calls"] == 3 + 1 + 1
        for col, spread in row["ratio_spread"].items():
            assert spread["min"] <= spread["median"] <= spread["max"], col
        assert row["impls"]["fused"]["spread"]["median"] == row["impls"]["fused"]["time_ms"]


def test_official_column_holds_n_squared_matrices(tmp_path):
    """Its peak memory grows as n² (×4 for 2× n at a small head size), ours as n (×2)."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, *SCRIPT, "--fast", "--lengths", "64", "128", "--head-dim", "4", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    small, large = (row["impls"] for row in json.loads(out.read_text())["rows"])
    assert 3.3 < large["official"]["extra_mib"] / small["official"]["extra_mib"] < 4.5
    assert large["fused"]["extra_mib"] / small["fused"]["extra_mib"] < 2.5


def test_attention_benchmark_skips_cells_over_the_memory_cap(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, *SCRIPT, "--fast", "--lengths", "256", "--max-mem-gb", "0.05", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(out.read_text())["rows"][0]["impls"]
    assert cells["official"]["skipped"]  # the official code's n×n matrices; the other paths are O(n) memory
    assert cells["official"]["time_ms"] is None and cells["official"]["times_ms"] == []
    assert all(cells[i]["skipped"] is None for i in ("sdpa", "fused", "materialized"))
    assert "skipped" in proc.stdout and "--max-mem-gb 0.05" in proc.stdout


def test_gfsa_bench_all_runs_every_benchmark_in_fast_mode(tmp_path):
    """`gfsa bench all --fast`: operator, model, linear and decoding benchmarks end to end (no timing assertions)."""
    cmd = [sys.executable, "-m", "gfsa.cli", "bench", "all", "--fast", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("Forward+backward time", "Training step (fwd+bwd+AdamW)", "Inference", "LRA encoder training step"):
        assert title in proc.stdout, title

    attention = json.loads((tmp_path / "attention.json").read_text())
    assert {row["auto_impl"] for row in attention["rows"]} <= {"fused", "materialized"}

    models = json.loads((tmp_path / "models.json").read_text())
    assert [r["model"] for r in models["rows"]] == ["deit_s", "bert_base", "gpt2"]
    layers = {"deit_s": 2, "bert_base": 2, "gpt2": 2}  # the --fast configs; "selected" is layer 1 of 2
    for row in models["rows"]:
        assert set(row["variants"]) == {"none", "selected", "all", "selected_official", "all_official"}
        assert max(row["max_abs_diff_vs_official"].values()) < 1e-4  # ours and the official formulation agree
        assert row["variants"]["none"]["added_parameters"] == 0 < row["variants"]["all"]["added_parameters"]
        for cell in row["variants"].values():
            assert cell["train"]["time_ms"] > 0 and cell["infer"]["time_ms"] > 0 and cell["train_peak_mib"] > 0
        assert set(row["train_overhead_pct"]) == {"selected", "all", "selected_official", "all_official"}
        # Every patched layer ran the official code on every forward pass of the official variants (GPT-2's
        # used to go through the KV-cache path instead, unnoticed), and ours never did.
        for name, patched in (("selected_official", 1), ("all_official", layers[row["model"]])):
            cell = row["variants"][name]
            assert cell["official_calls"] == patched * cell["forward_passes"] > 0, (row["model"], name)
        assert all(row["variants"][n]["official_calls"] is None for n in ("none", "selected", "all"))
        assert row["train_overhead_spread"]["all"]["median"] == pytest.approx(
            1 + row["train_overhead_pct"]["all"] / 100
        )
    assert {r["model"]: r["goal"]["verdict"] for r in models["rows"] if "goal" in r} == {
        "deit_s": "unknown (noise)",  # one repetition
        "gpt2": "unknown (noise)",
    }
    for name in ("attention", "models", "linear", "decode"):
        noise = json.loads((tmp_path / f"{name}.json").read_text())["noise"]
        assert noise["meaningless"] is True and any("1 repetition" in w for w in noise["warnings"]), name

    linear = json.loads((tmp_path / "linear.json").read_text())
    assert [r["n"] for r in linear["operator"]] == [64, 128, 256] == [r["n"] for r in linear["model"]]
    for row in linear["operator"]:
        assert all(cell["time_ms"] > 0 and cell["peak_mib"] > 0 for cell in row["impls"].values())
    assert set(linear["growth"]["operator_time"]) == {"128", "256"}

    decode = json.loads((tmp_path / "decode.json").read_text())
    assert [r["context"] for r in decode["rows"]] == [32, 64] and "ms per new token" in proc.stdout
    for row in decode["rows"]:
        assert set(row["per_token_ms"]) == {"plain_cached", "gfsa_cached", "gfsa_uncached"}
        assert all(v > 0 for v in row["per_token_ms"].values())


def test_gfsa_bench_usage():
    proc = subprocess.run([sys.executable, "-m", "gfsa.cli", "bench"], check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and "gfsa bench {attention,models,linear,decode,gpu,all}" in proc.stderr


def test_attention_grid_prints_the_auto_table(tmp_path):
    """--grid: fused vs materialized for every length × head size × dtype × causal/full, which is faster, how far
    behind auto is, and the suggested AUTO_EXPLICIT_MAX_LEN as Python that kernels.py accepts."""
    out = tmp_path / "grid.json"
    cmd = [sys.executable, *SCRIPT, "--grid", "--fast", "--repeats", "3", "--head-dims", "8", "16", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    cells = {(r["dtype"], r["causal"], r["head_dim"], r["n"]) for r in result["grid"]}
    assert cells == {(t, c, d, n) for t in ("fp32", "bf16") for c in (False, True) for d in (8, 16) for n in (32, 64)}
    for row in result["grid"]:
        fused, mat = row["impls"]["fused"]["time_ms"], row["impls"]["materialized"]["time_ms"]
        assert row["auto_over_best"] == pytest.approx(row["impls"][row["auto_impl"]]["time_ms"] / min(fused, mat))
        assert row["faster"] in ("fused", "materialized", "either (noise)")
        assert len(row["impls"]["fused"]["times_ms"]) == 1  # --fast: one repetition
    assert "Suggested table for gfsa/nn/dispatch.py" in proc.stdout
    # The printed table is valid Python of kernels.py's shape, after its comment line.
    table = ast.literal_eval(result["suggested_python"].split("AUTO_EXPLICIT_MAX_LEN = ", 1)[1])
    assert set(table) == {("cpu", p, a) for p in ("fp32", "bf16") for a in ("full", "causal")}
    assert all(set(row) == {8, 16} and set(row.values()) <= {0, 32, 64} for row in table.values())
    for s in result["suggested"]:  # each entry is the crossover whose worst slowdown is smallest
        ratios = {
            r["n"]: r["materialized_over_fused"]
            for r in result["grid"]
            if (r["dtype"], r["causal"], r["head_dim"]) == (s["key"][1], s["key"][2] == "causal", s["head_dim"])
        }

        def worst(limit, ratios=ratios):
            return max(max(x, 1) if n <= limit else max(1 / x, 1) for n, x in ratios.items())

        assert s["worst_behind"] == pytest.approx(min(worst(limit) for limit in (0, 32, 64)), abs=0.005)


def test_noise_flags_spread_ratios_few_repetitions_and_a_busy_machine():
    from gfsa.ops.bench.common import Noise

    noise = Noise(repeats=7)
    tight = noise.ratio("tight", {"times_ms": [10, 11, 10, 10, 12, 10, 10]}, {"times_ms": [5, 5.5, 5, 5, 6, 5, 5]})
    wide = noise.ratio("wide", {"times_ms": [10] * 7}, {"times_ms": [5, 5, 5, 5, 5, 5, 140]})
    assert tight["median"] == 2 and not tight["noisy"]
    assert wide["min"] == pytest.approx(10 / 140) and wide["noisy"]
    quiet = {"load_average": [0.1, 0.1, 0.1], "load_average_end": [2.2, 1, 1], "threads": 2, "cores": 2}
    report = noise.report({**quiet, "device": "cpu"})
    assert report["meaningless"] and report["noisy"] == ["wide"] and not report["busy"]
    assert len(report["warnings"]) == 1 and "wide" in report["warnings"][0]
    busy = noise.report({**quiet, "device": "cpu", "load_average": [1.5, 1, 1]})
    assert busy["busy"] and "busy machine" in busy["warnings"][-1]
    few = Noise(repeats=1)
    few.ratio("one", {"times_ms": [10]}, {"times_ms": [1]})
    assert few.report(quiet)["meaningless"] and "1 repetition(s)" in few.report(quiet)["warnings"][0]


def test_an_official_column_that_never_ran_the_official_code_stops_the_benchmark():
    import timm

    import gfsa
    from gfsa.ops.bench.common import check_official_ran, use_official_formulation

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    with pytest.raises(ValueError, match="no GFSA-patched attention module"):
        use_official_formulation(model)
    gfsa.patch(model, layers="all", wK=0.1)
    kernel = use_official_formulation(model)
    with pytest.raises(SystemExit, match="official formulation was never called"):
        check_official_ran(kernel, "vit")
    model(torch.randn(1, 3, 32, 32))
    assert check_official_ran(kernel, "vit") == 2  # one call per patched layer


def test_gfsa_bench_gpu_runs_every_stage_on_cpu(tmp_path):
    """`gfsa bench gpu --device cpu --fast`: the GPU check's stages, tiny, on CPU (the CUDA tests with
    GFSA_TEST_DEVICE=cpu, compile tests left to the GPU), one JSON and one Markdown file."""
    cmd = [sys.executable, "-m", "gfsa.cli", "bench", "gpu", "--device", "cpu", "--fast", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names == ["tests", "attention", "models:deit_s", "models:gpt2", "models:bert_base", "decode", "grid"]
    assert all(s["status"] == "ok" and s["seconds"] <= s["limit_s"] for s in report["stages"]), report["stages"]
    tests = report["stages"][0]["tests"]
    assert tests["passed"] >= 40 and tests["failed"] == tests["errors"] == tests["skipped"] == 0
    assert [g["model"] for g in report["goals"]] == ["deit_s", "gpt2"]
    md = (tmp_path / "gpu.md").read_text()
    for title in (
        "## GPU check",
        "### Goal",
        "### CUDA tests",
        "### Operator",
        "### Models",
        "### Decoding",
        "AUTO_EXPLICIT",
    ):
        assert title in md, title
    assert "[gpu check] (1/7) tests" in proc.stdout and "  tests | " in proc.stdout  # progress, the stage's output
    assert (tmp_path / "logs" / "models_gpt2.log").read_text().startswith("$ ")


def test_gfsa_bench_gpu_without_cuda_or_time_says_so(tmp_path):
    import torch as _torch

    cmd = [sys.executable, "-m", "gfsa.cli", "bench", "gpu", "--out", str(tmp_path / "a")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    if not _torch.cuda.is_available():
        assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "--device cpu --fast" in proc.stderr
    out = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "gfsa.cli",
        "bench",
        "gpu",
        "--device",
        "cpu",
        "--fast",
        "--budget",
        "5",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1  # nothing ran: not ok, but the files say why
    report = json.loads((out / "gpu.json").read_text())
    assert {s["status"] for s in report["stages"]} == {"skipped"}
    assert "budget" in report["stages"][0]["reason"] and "| tests | skipped |" in (out / "gpu.md").read_text()
