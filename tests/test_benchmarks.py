"""The attention benchmark script runs end to end and checks its implementations agree before timing."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert result["config"]["repeats"] == 1
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
    for row in models["rows"]:
        assert set(row["variants"]) == {"none", "selected", "all", "selected_official", "all_official"}
        assert max(row["max_abs_diff_vs_official"].values()) < 1e-4  # ours and the official formulation agree
        assert row["variants"]["none"]["added_parameters"] == 0 < row["variants"]["all"]["added_parameters"]
        for cell in row["variants"].values():
            assert cell["train"]["time_ms"] > 0 and cell["infer"]["time_ms"] > 0 and cell["train_peak_mib"] > 0
        assert set(row["train_overhead_pct"]) == {"selected", "all", "selected_official", "all_official"}

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
    assert proc.returncode == 2 and "gfsa bench {attention,models,linear,decode,all}" in proc.stderr
