"""``gfsa report``: tables from generated records (partial, duplicated, corrupt and foreign ones) with
exact numbers, the real paper tables' cell matching, charts, offline publishing, bad input, no Lightning
on the path, and a real W&B-logged run read back and reported."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, compose
from digits_runs import digits_runs
from omegaconf import OmegaConf

from gfsa.ops import report as rp
from gfsa.runner import results as R

TOY = """title: Toy table (vit_mini on digits)
direction: up
improvement: relative
scale: 100
seeds: [0, 1, 2]
cells:
  - {row: vit_mini, column: digits, variant: baseline, metric: acc, paper: 80.0, overrides: [gfsa.layers=none]}
  - {row: vit_mini, column: digits, variant: gfsa, metric: acc, paper: 81.5, overrides: [gfsa.layers=all]}
  - {row: vit_mini, column: digits, variant: gfsa_even, metric: acc, paper: 81.0, overrides: [gfsa.layers=selected]}
  - {row: vit_mini, column: digits, variant: contranorm, metric: acc, paper: 80.4, overrides: [method=contranorm]}
"""
BASE = {0: 0.80, 1: 0.82, 2: 0.81}
GFSA = {0: 0.82, 1: 0.83, 2: 0.84}
CONTRANORM = {0: 0.81, 1: 0.80}  # seed 2 never finished: a partial sweep


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # composed cells are cached here, not in the user's cache
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


def write_record(root: Path, overrides: list[str], acc: float, step: float, finished: str = "2026-01-02T00:00:00"):
    """A results record as gfsa.runner.train writes it, for the config ``overrides`` compose to."""
    cfg = OmegaConf.to_container(compose(overrides, root), resolve=True)
    rdir = R.run_dir(cfg)
    record = {
        "schema": R.SCHEMA,
        "status": "finished",
        "run_dir": str(rdir),
        "backbone": cfg["backbone"]["name"],
        "task": cfg["task"]["name"],
        "variant": R.variant_name(cfg),
        "seed": cfg["seed"],
        "pair_key": R.pair_key(cfg),
        "primary_metric": "acc",
        "selected_by": "last",
        "metrics": {"acc": {"value": acc, "direction": "up"}, "loss": {"value": 1.0, "direction": "down"}},
        "gfsa": {"layers": [], "added_parameters": 0 if R.is_baseline(cfg) else 24},
        "timing": {"step_time_s": step},
        "config": cfg,
        "finished_at": finished,
    }
    R.write_record(rdir, record)
    return rdir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two results dirs of a toy sweep with a copied run, a corrupt and a foreign record, three
    schema-1 records with bad fields, a run without a record (still training) and two runs that match
    no cell."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    tables = tmp_path / "experiments"
    tables.mkdir()
    (tables / "toy.yaml").write_text(TOY)
    a, b = tmp_path / "results", tmp_path / "copied"
    for seed, acc in BASE.items():
        write_record(a, ["gfsa.layers=none", f"seed={seed}"], acc, 0.10)
    for seed, acc in GFSA.items():
        gfsa_dir = write_record(a, ["gfsa.layers=all", f"seed={seed}"], acc, 0.12)
    for seed, acc in CONTRANORM.items():
        write_record(a, ["method=contranorm", f"seed={seed}"], acc, 0.11)
    shutil.copytree(gfsa_dir, b / "vit_mini" / "digits" / gfsa_dir.name)  # the same run twice
    (a / "broken").mkdir()
    (a / "broken" / R.RECORD).write_text("{half a record")
    (a / "foreign").mkdir()
    (a / "foreign" / R.RECORD).write_text(json.dumps({"schema": 99, "accuracy": 1}))
    good = json.loads((gfsa_dir / R.RECORD).read_text())  # schema-1 records with bad fields, else a valid run
    bad = {
        "gfsa_str": {**good, "config": {**good["config"], "gfsa": "all"}},  # config.gfsa.get → AttributeError
        "no_backbone": {k: v for k, v in good.items() if k != "backbone"},  # record["backbone"] → KeyError
        "step_str": {**good, "timing": {"step_time_s": "slow"}},  # passes _valid; pairing raises TypeError
    }
    for name, record in bad.items():
        (a / name).mkdir()
        (a / name / R.RECORD).write_text(json.dumps(record))
    (a / "vit_mini" / "digits" / "gfsa-selected-K3-seed0-unfinished" / "checkpoints").mkdir(parents=True)
    write_record(a, ["gfsa.layers=none", "trainer.max_epochs=2"], 0.50, 0.10)  # not the cell's config
    write_record(a, ["gfsa.layers=all", "trainer.max_epochs=2"], 0.55, 0.15)
    return {"dirs": [str(a), str(b)], "experiments": tables, "gfsa_copy": b}


def test_report_tables_have_exact_numbers(sweep, tmp_path):
    messages = []
    rep = rp.run(sweep["dirs"], out=str(tmp_path), experiments_dir=sweep["experiments"], echo=messages.append)
    c = rep.collected
    assert c.read == 16 and len(c.runs) == 10 and len(c.duplicates) == 1 and len(c.skipped) == 5
    bad = {"broken", "foreign", "gfsa_str", "no_backbone", "step_str"}
    assert {Path(s).parent.name for s, _ in c.skipped} == bad
    why = {Path(s).parent.name: w for s, w in c.skipped}
    assert "config.gfsa is str" in why["gfsa_str"] and "top-level backbone" in why["no_backbone"]
    assert "malformed record (TypeError" in why["step_str"]
    for name in bad:  # each warning names the file
        path = str(Path(sweep["dirs"][0]) / name / R.RECORD)
        assert any(m.startswith(f"warning: skipped {path}:") for m in messages), (name, messages)
    assert any("duplicate" in m and str(sweep["gfsa_copy"]) in m for m in messages)

    _, rows = rep.tables["toy"]
    by = {r.variant: r for r in rows}
    base, ours, even, cn = by["baseline"], by["gfsa"], by["gfsa_even"], by["contranorm"]
    assert (base.value.mean, base.value.std, base.value.n) == pytest.approx((81.0, 1.0, 3))
    assert base.vs_paper == pytest.approx(1.0) and base.gain_pct is None
    assert (ours.value.mean, ours.value.std, ours.value.n) == pytest.approx((83.0, 1.0, 3))
    pcts = [100 * (GFSA[s] - BASE[s]) / BASE[s] for s in (0, 1, 2)]
    assert ours.gain_pct.mean == pytest.approx(statistics.fmean(pcts))
    assert ours.gain_pct.std == pytest.approx(statistics.stdev(pcts))
    assert (ours.gain_abs.mean, ours.gain_abs.std) == pytest.approx((2.0, 1.0))  # points: 2, 1, 3
    assert ours.paper_gain == pytest.approx(100 * 1.5 / 80)  # relative %, as the paper prints GLUE-style tables
    assert ours.gain_vs_paper == pytest.approx(statistics.fmean(pcts) - 1.875)
    assert ours.overhead_pct.mean == pytest.approx(20.0)
    assert even.value is None and even.runs == [] and even.paper_gain == pytest.approx(100 * 1.0 / 80)
    assert cn.value.n == 2 and cn.value.mean == pytest.approx(80.5)
    assert cn.gain_pct.mean == pytest.approx(statistics.fmean([100 * 1 / 80, 100 * -2 / 82]))

    md = (tmp_path / "toy.md").read_text()
    assert "| vit_mini | digits | gfsa_even | 0 | missing | 81.00 | — |" in md
    g = ours.gain_pct
    assert (
        f"| vit_mini | digits | gfsa | 3 | 83.00 ± 1.00 | 81.50 | +1.50 | +{g.mean:.3f} ± {g.std:.3f} | +2.000 ± 1.000 |"
        in md
    )
    half = 4.302652729749464 * g.std / 3**0.5  # the paired t-interval: t(0.975, 2 df) from the t-table
    assert f"| +2.000 ± 1.000 | [{g.mean - half:+.3f}, {g.mean + half:+.3f}] n=3 | +1.875 |" in md
    with (tmp_path / "toy.csv").open() as f:
        csv_rows = {r["variant"]: r for r in __import__("csv").DictReader(f)}
    assert float(csv_rows["gfsa"]["gain_pct_mean"]) == pytest.approx(g.mean) and csv_rows["gfsa"]["seeds"] == "0 1 2"
    assert csv_rows["gfsa_even"]["n"] == "0" and csv_rows["gfsa_even"]["mean"] == ""

    (other_base,) = [r for r in rep.generic if r.variant == "baseline"]
    (other_gfsa,) = [r for r in rep.generic if r.variant != "baseline"]
    assert other_gfsa.variant == "gfsa[all,K3]" and other_gfsa.value.mean == pytest.approx(0.55)
    assert other_gfsa.gain_pct.mean == pytest.approx(10.0) and other_gfsa.overhead_pct.mean == pytest.approx(50.0)
    assert other_base.value.mean == pytest.approx(0.50)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "toy.md", "toy.csv", "toy.png", "other.md", "other.csv"} <= files
    assert {"improvement_by_domain.png", "overhead_vs_improvement.png"} <= files


def test_paper_tables_match_records_through_presets(tmp_path):
    """Records of the real compared-methods table: how a run was executed (devices, per-device batch,
    data_dir) does not matter; what it computes (epochs) does."""
    root = tmp_path / "results"
    extra = ["task.data_dir=/data/imagenet", "trainer.devices=8", "task.batch_size=128"]
    write_record(root, ["preset=imagenet/deit_s", "gfsa.layers=none", *extra], 0.797, 1.0)
    write_record(root, ["preset=imagenet/deit_s", "method=attnscale", "gfsa.layers=none", *extra], 0.806, 1.1)
    write_record(
        root, ["preset=imagenet/deit_s", "method=featscale", "gfsa.layers=none", "trainer.max_epochs=300"], 0.81, 1
    )
    rep = rp.run([str(root)], out=str(tmp_path / "out"), tables=["compared_imagenet"], echo=lambda m: None)
    _, rows = rep.tables["compared_imagenet"]
    by = {(r.row, r.variant): r for r in rows}
    attn = by[("deit_s_12", "attnscale")]
    assert attn.value.mean == pytest.approx(80.6) and attn.paper == 80.7
    assert attn.gain_abs.mean == pytest.approx(0.9) and attn.paper_gain == pytest.approx(0.9)  # points (ImageNet)
    assert attn.gain_vs_paper == pytest.approx(0.0, abs=1e-9)
    assert by[("deit_s_12", "featscale")].runs == []  # 300 epochs is not the cell's 500
    assert [r.column for r in rep.generic] == ["imagenet"] and rep.generic[0].variant == "featscale"
    assert by[("deit_s_24", "contranorm")].value is None


def test_publish_offline_says_what_and_where(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    messages = []
    rp.run(sweep["dirs"][:1], wandb_path="me/gfsa", out=str(tmp_path), publish=True,
           experiments_dir=sweep["experiments"], echo=messages.append)  # fmt: skip
    assert any("reading local records only" in m for m in messages)
    (line,) = [m for m in messages if "would publish" in m]
    assert "me/gfsa" in line and str(tmp_path / "report.md") in line
    assert "tables (toy)" in line


def test_wandb_report_is_built_with_the_tables(sweep):
    pytest.importorskip("wandb_workspaces", reason="the report extra (wandb-workspaces) is not installed")
    rep = rp.build(rp.collect(rp.local_records(sweep["dirs"][:1])), rp.load_tables(sweep["experiments"]))
    report = rp.wandb_report(rep, "me", "gfsa")
    assert (report.title, report.entity, report.project) == ("GFSA reproduction", "me", "gfsa")
    markdown = [b.text for b in report.blocks if type(b).__name__ == "MarkdownBlock"]
    assert len(markdown) == 2 and "| vit_mini | digits | gfsa | 3 | 83.00 ± 1.00 |" in markdown[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "no finished results records in"),
        (["{results}", "--table", "nope"], "unknown table nope; choose from"),
        (["{results}", "--wandb", "justaproject"], "expected ENTITY/PROJECT"),
        (["{results}", "--publish"], "--publish needs --wandb ENTITY/PROJECT"),
        (["{nowhere}"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(sweep, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"empty": tmp_path / "empty", "results": sweep["dirs"][0], "nowhere": tmp_path / "nowhere"}
    with pytest.raises(SystemExit) as e:
        rp.main_cli([a.format(**paths) for a in args] + ["--experiments", str(sweep["experiments"])])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_cli_prints_the_tables_without_importing_lightning(sweep, tmp_path):
    code = (
        "import sys\nfrom gfsa.cli import main\n"
        f"main(['report', *{sweep['dirs']!r}, '--experiments', {str(sweep['experiments'])!r}, '--out', {str(tmp_path)!r}])\n"
        "print('LIGHTNING_LOADED', 'lightning' in sys.modules)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = subprocess.run(
        [PYTHON, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LIGHTNING_LOADED False" in out.stdout
    assert "Toy table (vit_mini on digits)" in out.stdout and "83.00 ± 1.00" in out.stdout
    assert "10 runs from 16 records (1 duplicates counted once, 5 skipped)" in out.stdout
    assert "warning: skipped" in out.stdout and "broken" in out.stdout


def test_real_wandb_run_is_read_back_and_reported(tmp_path):
    from wandb_log import logged

    runs = digits_runs()
    messages = []
    rep = rp.run([str(runs["root"])], out=str(tmp_path / "out"), echo=messages.append)
    assert not rep.tables  # a 3-step run is no paper cell
    by = {r.variant: r for r in rep.generic}
    assert set(by) == {"baseline", "gfsa[all,K3]", "contranorm"}
    for variant, key in (("baseline", "baseline"), ("gfsa[all,K3]", "gfsa"), ("contranorm", "contranorm")):
        rec = runs[key]
        (path,) = Path(rec["run_dir"]).glob("wandb/offline-run-*/run-*.wandb")
        run_info, values = logged(path)
        assert run_info["id"] == rec["run_id"]
        assert by[variant].value.mean == pytest.approx(values["val/acc"], abs=1e-6)
        if key != "baseline":
            assert by[variant].gain_pct.mean == pytest.approx(rec["comparison"]["improvement_pct"], abs=1e-9)
            assert by[variant].added_parameters == values["added_parameters"] == rec["gfsa"]["added_parameters"]


def test_cells_that_depart_from_the_official_recipe_are_marked(tmp_path):
    """A cell's ``departs`` note puts † on its row (terminal, Markdown) and lists why under the table; CSV has it."""
    tables = tmp_path / "experiments"
    tables.mkdir()
    (tables / "toy.yaml").write_text(
        TOY.replace(
            "variant: gfsa, metric: acc, paper: 81.5,",
            'variant: gfsa, metric: acc, paper: 81.5, departs: "no official recipe for digits",',
        )
    )
    results = tmp_path / "results"
    write_record(results, ["gfsa.layers=none"], 0.80, 0.10)
    write_record(results, ["gfsa.layers=all"], 0.82, 0.12)
    out = tmp_path / "out"
    rep = rp.run([str(results)], out=str(out), experiments_dir=tables, echo=lambda m: None)
    rows = {r.variant: r for r in rep.tables["toy"][1]}
    assert rows["gfsa"].departs == "no official recipe for digits" and rows["baseline"].departs is None
    md = (out / "toy.md").read_text()
    assert "| vit_mini | digits | gfsa † | 1 |" in md and "| vit_mini | digits | baseline | 1 |" in md
    assert "- † vit_mini/digits/gfsa: no official recipe for digits" in md
    with (out / "toy.csv").open() as f:
        csv_rows = {r["variant"]: r for r in __import__("csv").DictReader(f)}
    assert csv_rows["gfsa"]["departs"] == "no official recipe for digits" and csv_rows["baseline"]["departs"] == ""
