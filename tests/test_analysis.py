"""The oversmoothing analysis: analytic properties of the measurements, capture on timm and BERT
(padding left out), ``gfsa analyze`` on checkpoints the tests train, and the training callback's W&B log."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
from pathlib import Path

import pytest
import timm
import torch
import transformers as tf
from conftest import FAST, compose
from digits_runs import STEPS, VARIANTS, digits_runs
from matplotlib.backends.backend_agg import FigureCanvasAgg

import gfsa
from gfsa.nn.patching import UnsupportedModelError
from gfsa.ops import analysis as A
from gfsa.runner import results as R
from gfsa.zoo.methods import apply_method

# --------------------------------------------------------------------------------------------------
# analytic tests of the measurements


def test_uniform_attention_passes_only_the_dc_component():
    lam = A.frequency_response(torch.full((7, 7), 1 / 7, dtype=torch.float64))
    torch.testing.assert_close(lam, torch.tensor([1.0] + [0.0] * 6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_identity_passes_every_frequency():
    torch.testing.assert_close(A.frequency_response(torch.eye(6)), torch.ones(6, dtype=torch.float64))


def test_response_is_the_dft_quadratic_form():
    h = torch.rand(2, 5, 5)
    n = 5
    j = torch.arange(n, dtype=torch.float64)
    basis = torch.exp(2j * torch.pi * j[:, None] * j[None, :] / n) / n**0.5  # column k is f_k
    expected = torch.einsum("jk,bjl,lk->bk", basis.conj(), h.to(torch.complex128), basis).abs()
    torch.testing.assert_close(A.frequency_response(h), expected)


def test_gfsa_dc_gain_is_w0_plus_w1_plus_wK():
    a = torch.softmax(torch.randn(3, 8, 8), dim=-1)  # row-stochastic, 3 heads
    w0, w1, wK = 0.1, 1.0, torch.tensor([0.2, -0.3, 0.5])
    h = gfsa.gfsa_filter(a, w0, w1, wK, K=3)
    torch.testing.assert_close(A.frequency_response(h)[:, 0], (w0 + w1 + wK).double(), atol=1e-6, rtol=0)


def test_token_measurements():
    same = torch.randn(1, 5).repeat(4, 1)
    assert float(A.cosine_similarity(same)) == pytest.approx(1.0)
    assert float(A.hf_energy_ratio(same)) == pytest.approx(0.0, abs=1e-12)
    orth = torch.eye(4)  # orthogonal tokens: cosine 0; mean (¼,…): DC energy 4·(4/16) = 1, total 4 → ratio 3
    assert float(A.cosine_similarity(orth)) == pytest.approx(0.0)
    assert float(A.hf_energy_ratio(orth)) == pytest.approx(3.0)
    rank1 = torch.outer(torch.randn(6, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    torch.testing.assert_close(
        A.singular_spectrum(rank1), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), atol=1e-9, rtol=0
    )


# --------------------------------------------------------------------------------------------------
# capture on models


def test_capture_on_bert_leaves_padding_out_and_sees_gfsa():
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, initializer_range=0.5, num_labels=2)  # fmt: skip
    net = tf.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, 50, (1, 7))
    padded = {"input_ids": torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
              "attention_mask": torch.tensor([[1] * 7 + [0] * 3])}  # fmt: skip

    def measure(model, batch):
        with torch.no_grad(), A.Capture(model) as cap:
            cap.batch(batch)
            model(**batch)
        return cap.summary()

    alone, with_padding = measure(net, {"input_ids": ids}), measure(net, padded)
    assert net.config._attn_implementation == "sdpa"  # restored after the capture
    for a, b in zip(alone["layers"], with_padding["layers"], strict=True):
        assert a["cosine_similarity"] == pytest.approx(b["cosine_similarity"], abs=1e-5)
        assert a["frequency_response"] == pytest.approx(b["frequency_response"], abs=1e-5)
        assert a["dc_gain"] == pytest.approx(1.0)
    patched = gfsa.patch(copy.deepcopy(net), layers=[1], w0=0.2, wK=0.3)
    rows = measure(patched, padded)["layers"]
    assert rows[0]["dc_gain"] == pytest.approx(1.0) and rows[1]["dc_gain"] == pytest.approx(1.5)


def test_capture_sees_attnscale_and_unsupported_families_fail_in_one_line():
    net = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2,
                            in_chans=1, num_classes=3).eval()  # fmt: skip
    apply_method(net, "attnscale", init=0.5)
    with torch.no_grad(), A.Capture(net) as cap:
        cap.batch(None)
        net(torch.randn(2, 1, 8, 8))
    rows = cap.summary()["layers"]
    assert [r["dc_gain"] for r in rows] == pytest.approx([1.0, 1.0])  # the DC part is kept
    assert all(r["hf_gain"] > 0 for r in rows)
    cait = timm.create_model("cait_xxs24_224", img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, in_chans=1)
    with pytest.raises(UnsupportedModelError, match="gfsa analyze supports timm ViT/DeiT") as e:
        A.Capture(cait)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------
# gfsa analyze on trained checkpoints, and the callback during training


def test_analyze_a_trained_run_against_its_baseline(tmp_path):
    runs = digits_runs()
    rec = runs["gfsa"]
    out = A.analyze(str(Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"), batches=1, out=str(tmp_path))
    assert set(out) == {"baseline", "gfsa"} and out["baseline"]["run_dir"] == runs["baseline"]["run_dir"]
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["gfsa"]["layers"][0].keys() >= {"frequency_response", "cosine_similarity", "hf_energy_ratio"}
    stems = {"frequency_response", "frequency_response_all_layers", "oversmoothing"}
    assert {p.name for p in tmp_path.iterdir()} == {"analysis.json"} | {
        f"{s}.{f}" for s in stems for f in ("png", "pdf", "svg")
    }
    assert saved["gfsa"]["n"] == 1 and saved["gfsa"]["layers"][0]["cosine_similarity_std"] is None
    n_tokens = 17  # 8×8 digits in 2×2 patches + the class token
    assert saved["gfsa"]["normalized_frequency"] == pytest.approx([k / n_tokens for k in range(n_tokens // 2 + 1)])
    for i, row in enumerate(saved["gfsa"]["layers"]):  # λ0 = w0 + w1 + wK, averaged over heads
        coeffs = rec["gfsa"]["coefficients"][f"net.blocks.{i}.attn.gfsa"]
        dc = sum(w0 + w1 + wk for w0, w1, wk in zip(coeffs["w0"], coeffs["w1"], coeffs["wK"], strict=True)) / 4
        assert row["dc_gain"] == pytest.approx(dc, abs=1e-5)
        assert saved["baseline"]["layers"][i]["dc_gain"] == pytest.approx(1.0)
    assert (
        len(saved["gfsa"]["last_layer_singular_values"]) == n_tokens
        and saved["gfsa"]["last_layer_singular_values"][0] == 1.0
    )


def test_analyze_a_run_recorded_by_an_older_version(tmp_path):
    """A record whose config predates keys added since (resume, run.lock_timeout, callbacks, optim.no_decay)."""
    old = tmp_path / "old-run"
    shutil.copytree(digits_runs()["gfsa"]["run_dir"], old)
    record = R.load_record(old)
    for key in ("resume", "callbacks"):
        record["config"].pop(key, None)
    record["config"]["run"].pop("lock_timeout", None)
    record["config"]["optim"].pop("no_decay", None)
    R.write_record(old, record)
    out = A.analyze(str(old), batches=1, out=str(tmp_path / "out"))
    assert out["gfsa"]["layers"] and (tmp_path / "out" / "analysis.json").is_file()


def test_analyze_bad_input_is_one_line_exit_2(tmp_path, capsys):
    runs = digits_runs()
    unsupported = tmp_path / "cait-run"
    shutil.copytree(runs["baseline"]["run_dir"], unsupported)
    record = R.load_record(unsupported)
    record["config"]["backbone"] = {"name": "cait_mini", "type": "timm", "model": "cait_xxs24_224", "pretrained": False,
                                    "kwargs": {"patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}}  # fmt: skip
    R.write_record(unsupported, record)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    good = [runs["gfsa"]["run_dir"], "--out", str(out)]
    for args, message in (
        ([str(tmp_path / "empty")], "no readable result.json"),
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(unsupported)], "gfsa analyze supports timm ViT/DeiT"),
        ([*good, "--batches", "0"], "--batches 0: measure at least 1 validation batch"),
        ([*good, "--batches", "-2"], "--batches -2: measure at least 1 validation batch"),
    ):
        with pytest.raises(SystemExit) as e:
            A.main_cli(args)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()  # no empty JSON or plots written


def test_callback_logs_measurements_and_coefficients_to_wandb():
    from wandb_log import logged

    runs = digits_runs()
    for variant in ("baseline", "gfsa"):
        rec = runs[variant]
        (path,) = Path(rec["run_dir"]).glob("wandb/offline-run-*/run-*.wandb")
        _, values = logged(path)
        for i in range(6):
            assert 0 < values[f"analysis/cosine_similarity/layer_{i}"] < 1
            assert values[f"analysis/hf_energy_ratio/layer_{i}"] > 0
        assert values["analysis/dc_gain/layer_0"] == pytest.approx(1.0 if variant == "baseline" else 1.3, abs=0.05)
    _, values = logged(next(Path(runs["gfsa"]["run_dir"]).glob("wandb/offline-run-*/run-*.wandb")))
    assert values["analysis/wK/net.blocks.5.attn.gfsa/head_3"] == pytest.approx(
        runs["gfsa"]["gfsa"]["coefficients"]["net.blocks.5.attn.gfsa"]["wK"][3], abs=1e-6
    )


# --------------------------------------------------------------------------------------------------
# several seeds of one config: mean ± std, and what the figures show


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """GFSA on the selected layers (2, 4, 6 of 6) and the baseline, seeds 0 and 1, side by side."""
    from gfsa.runner.train import run

    root = tmp_path_factory.mktemp("seeds")
    steps = [o for o in STEPS if not o.startswith("logger=")]
    gfsa_run = ["gfsa.layers=selected", *VARIANTS["gfsa"][1:]]
    return {
        (seed, name): run(compose([*FAST, *steps, f"seed={seed}", *overrides], root))
        for seed in (0, 1)
        for name, overrides in (("baseline", ["gfsa.layers=none"]), ("gfsa", gfsa_run))
    }


def test_analyze_seeds_gives_mean_and_std_and_marks_patched_layers(two_seeds, tmp_path):
    dirs = [two_seeds[(s, "gfsa")]["run_dir"] for s in (0, 1)]
    out = A.analyze(dirs, batches=1, out=str(tmp_path))
    assert set(out) == {"baseline", "gfsa"} and out["gfsa"]["n"] == 2 and out["gfsa"]["seeds"] == [0, 1]
    assert out["baseline"]["run_dirs"] == [two_seeds[(s, "baseline")]["run_dir"] for s in (0, 1)]
    for name in ("baseline", "gfsa"):
        for i, row in enumerate(out[name]["layers"]):
            per_seed = [r["layers"][i] for r in out[name]["runs"]]
            for key in ("cosine_similarity", "hf_energy_ratio", "dc_gain"):
                values = [p[key] for p in per_seed]
                assert row[key] == pytest.approx(statistics.fmean(values))
                assert row[f"{key}_std"] == pytest.approx(statistics.stdev(values))
            curves = [p["frequency_response"] for p in per_seed]
            assert row["frequency_response"] == pytest.approx([statistics.fmean(c) for c in zip(*curves)])
    patched = two_seeds[(0, "gfsa")]["gfsa"]["layers"]
    assert patched == [1, 3, 5]

    per_layer, all_layers, oversmoothing = A.plot(out, tmp_path / "again")
    panels = [ax for ax in per_layer.figure.axes if ax.get_visible()]
    assert len(panels) == 6  # one panel per layer
    for i, ax in enumerate(panels):
        assert ax.get_yscale() == "log"
        assert {line.get_gid() for line in ax.get_lines()} == {f"baseline/layer{i}", f"gfsa/layer{i}"}
        assert ax.get_title(loc="left") == f"layer {i + 1}" + (" · GFSA" if i in patched else "")
        gfsa_line = next(line for line in ax.get_lines() if line.get_gid() == f"gfsa/layer{i}")
        assert list(gfsa_line.get_ydata()) == pytest.approx(out["gfsa"]["layers"][i]["frequency_response"])
        assert len(ax.collections) == 2  # the ± std bands of both runs
    for chart in (per_layer, all_layers, oversmoothing):
        assert [p.suffix for p in chart.files] == [".png", ".pdf", ".svg"] and all(p.is_file() for p in chart.files)
        fig = chart.figure
        FigureCanvasAgg(fig).draw()
        for ax in fig.axes:  # every axis labelled: the left column's y, the bottom row's x
            if not ax.get_visible() or hasattr(ax, "_colorbar"):
                continue
            spec = ax.get_subplotspec()
            if spec.is_first_col():
                assert ax.get_ylabel().strip(), (chart.png, ax.get_title())
            if spec.is_last_row() or chart is not per_layer:
                assert ax.get_xlabel().strip(), (chart.png, ax.get_title())
    cos = next(c for c in oversmoothing.figure.axes[0].containers if c.lines[0].get_gid() == "gfsa/cosine_similarity")
    segments = cos.lines[2][0].get_segments()
    stds = [row["cosine_similarity_std"] for row in out["gfsa"]["layers"]]
    assert [(seg[1][1] - seg[0][1]) / 2 for seg in segments] == pytest.approx(stds)


def test_analyze_seeds_of_different_configs_fail_in_one_line(two_seeds, tmp_path, capsys):
    selected, every = two_seeds[(0, "gfsa")]["run_dir"], digits_runs()["gfsa"]["run_dir"]
    capsys.readouterr()  # what training printed
    for args, message in (
        ([selected, every], "differ in more than the seed: pass the seeds of one config"),
        ([selected, selected], "is passed twice"),
        ([selected, two_seeds[(1, "gfsa")]["run_dir"], "--baseline", every], "--baseline goes with one run"),
    ):
        with pytest.raises(SystemExit) as e:
            A.main_cli([*args, "--out", str(tmp_path / "out")])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
