"""A real install: the wheel built from this tree, installed outside it, runs ``gfsa`` from another directory
with the configs, paper tables and Slurm template it ships (``gfsa/utils/resources.py`` finds them).

The wheel goes into a ``--target`` folder put first on PYTHONPATH: gfsa itself comes from the wheel and
its dependencies (torch, Lightning, ...) from the project's venv, so nothing is downloaded or reinstalled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO

# What building a wheel reads from the source tree (pyproject.toml, setup.py and what they name).
BUILD_INPUTS = ("gfsa", "conf", "experiments", "slurm", "pyproject.toml", "setup.py", "README.md", "LICENSE")


def _shipped_files() -> set[str]:
    """Every file the wheel must hold, by its path inside the wheel."""
    want = {"gfsa/py.typed", "gfsa/slurm/sweep.sbatch"}
    want |= {p.relative_to(REPO).as_posix() for p in (REPO / "gfsa").rglob("*.py")}
    want |= {p.relative_to(REPO).as_posix() for p in (REPO / "gfsa").rglob("*.txt")}
    for folder in ("conf", "experiments"):
        want |= {f"gfsa/{p.relative_to(REPO).as_posix()}" for p in (REPO / folder).rglob("*.yaml")}
    return {w for w in want if "__pycache__" not in w}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    # A venv inside a project's own git repository: the install must not record that project's commit.
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=60)
    subprocess.run(["git", "-C", str(root), "commit", "-q", "--allow-empty", "-m", "project"], check=True, timeout=60,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})  # fmt: skip
    src = root / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(root / "dist"), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("gfsa-*.whl")
    site = root / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GFSA_")}
    env["PYTHONPATH"] = str(site)  # not this checkout
    return {"wheel": wheel, "site": site, "cwd": elsewhere, "env": env, "gfsa": str(site / "bin" / "gfsa")}


def _run(installed: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        check=False,
        cwd=installed["cwd"],
        env=env or installed["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wheel_ships_configs_tables_template_and_types(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    missing = sorted(_shipped_files() - names)
    assert not missing, f"not in the wheel (check setup.py and package-data in pyproject.toml): {missing}"
    assert "gfsa/experiments/paper/reference.yaml" in names and "gfsa/conf/config.yaml" in names
    assert not [n for n in names if n.startswith(("conf/", "experiments/", "slurm/", "tests/"))]  # nothing top-level


def test_installed_package_finds_its_files_outside_the_checkout(installed):
    code = (
        "import gfsa; from gfsa.utils import resources as r; "
        "print(gfsa.__file__, r.conf_dir(), r.experiments_dir(), r.slurm_template(), sep='\\n')"
    )
    proc = _run(installed, PYTHON, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, conf, experiments, template = map(Path, proc.stdout.split())
    site = installed["site"] / "gfsa"
    assert module == site / "__init__.py"  # the wheel's gfsa, not this checkout's
    assert (conf, experiments, template) == (site / "conf", site / "experiments", site / "slurm" / "sweep.sbatch")
    assert (experiments / "paper" / "reference.yaml").is_file() and "{{cells}}" in template.read_text()


def test_console_script_runs_from_another_directory(installed):
    gfsa = installed["gfsa"]
    job = _run(installed, gfsa, "run", "--cfg", "job", "backbone=deit", "seed=3")
    assert job.returncode == 0, job.stderr[-2000:]
    cfg = yaml.safe_load(job.stdout)
    assert cfg["backbone"]["name"] == "deit" and cfg["seed"] == 3 and cfg["task"]["name"] == "digits"
    bad = _run(installed, gfsa, "run", "backbone=no_such_backbone")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "deit" in bad.stderr, bad.stderr[-2000:]
    for command in (["report", "--help"], ["sweep", "--help"], ["bench", "--help"], ["demo-data", "--help"]):
        proc = _run(installed, gfsa, *command)
        assert proc.returncode == 0 and "usage: gfsa" in proc.stdout, (command, proc.stderr[-2000:])
    # a paper table (experiments/) expanded into cells, each composed from the packaged conf/
    sweep = _run(installed, gfsa, "sweep", "--table", "glue", "--rows", "bert_base", "--dry-run")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "bert_base/cola/gfsa" in sweep.stdout and "bert/cola/" in sweep.stdout
    assert not any(installed["cwd"].iterdir())  # --cfg job, --help and --dry-run write nothing


def test_installed_gfsa_trains_and_reports(installed, tmp_path):
    """The built-in comparison's model on digits, a few CPU batches, then the report with the packaged tables."""
    results = tmp_path / "results"
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    quick += ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none", "with_baseline=false"]
    proc = _run(installed, installed["gfsa"], "run", *quick, f"paths.results_dir={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = results.rglob("result.json")
    record = json.loads(record.read_text())
    assert record["status"] == "finished"
    assert record["git"] == {"revision": None, "dirty": None}  # not the commit of the repository around the venv
    report = _run(installed, installed["gfsa"], "report", str(results), "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "report.md").is_file(), report.stderr[-3000:]


def test_conf_dir_override_still_wins_in_an_install(installed, tmp_path):
    mine = tmp_path / "conf"
    shutil.copytree(installed["site"] / "gfsa" / "conf", mine)
    text = (mine / "config.yaml").read_text()
    (mine / "config.yaml").write_text(text.replace("\nseed: 0\n", "\nseed: 42\n"))
    proc = _run(
        installed, installed["gfsa"], "run", "--cfg", "job", env={**installed["env"], "GFSA_CONF_DIR": str(mine)}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["seed"] == 42
