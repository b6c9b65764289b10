"""The ``gfsa`` command: ``gfsa run`` (one run), ``sweep``, ``layers``, ``report``, ``analyze`` and ``bench``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import gfsa
from gfsa.utils.errors import ConfigError, fail, first_line, first_lines
from gfsa.utils.resources import conf_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="gfsa",
        description="GFSA suite: train, sweep, report on and benchmark GFSA runs (`gfsa COMMAND --help`).",
        epilog="examples: gfsa run backbone=deit task=imagenet gfsa.layers=selected | gfsa layers selected 12",
    )
    parser.add_argument("--version", action="version", version=f"gfsa {gfsa.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="train one config (Hydra overrides follow, as for run.py)", add_help=False)
    sub.add_parser("sweep", help="submit a sweep or a paper table to Slurm without waiting (--help)", add_help=False)
    layers = sub.add_parser("layers", help="show which layers a gfsa.layers spec selects")
    layers.add_argument("spec")
    layers.add_argument("num_layers", type=int)
    # report/analyze parse their own options (gfsa/ops/report/cli.py, gfsa/ops/analysis/cli.py; docs/reports.md)
    sub.add_parser("report", help="improvement tables and charts vs baselines and the paper", add_help=False)
    sub.add_parser("analyze", help="oversmoothing analysis of a trained run", add_help=False)
    sub.add_parser("eval", help="score a run again from its best or last checkpoint (--help)", add_help=False)
    sub.add_parser("export", help="a trained run as a transformers or timm model directory (--help)", add_help=False)
    sub.add_parser(
        "bench",
        help="performance benchmarks: attention | models | linear | decode | gpu | all (--help)",
        add_help=False,
    )
    sub.add_parser(
        "demo-data", help="write tiny offline data for every domain; print a command for each", add_help=False
    )
    if argv[:1] == ["report"]:  # no Lightning on this path
        from gfsa.ops.report import main_cli as report_main

        report_main(argv[1:])
        return
    if argv[:1] == ["analyze"]:
        from gfsa.ops.analysis import main_cli as analyze_main

        analyze_main(argv[1:])
        return
    if argv[:1] == ["eval"]:
        evaluate_cli(argv[1:])
        return
    if argv[:1] == ["export"]:
        from gfsa.ops.export import main_cli as export_main

        export_main(argv[1:])
        return
    if argv[:1] == ["demo-data"]:  # gfsa/ops/demo_data.py
        from gfsa.ops.demo_data import main_cli as demo_main

        demo_main(argv[1:])
        return
    if argv[:1] == ["bench"]:  # the benchmarks parse their own options (docs/performance.md)
        bench(argv[1:])
        return
    if argv[:1] == ["run"]:  # Hydra parses the rest itself
        sys.argv = ["gfsa run", *argv[1:]]
        run_main(argv[1:])
        return
    if argv[:1] == ["sweep"]:  # no Lightning on this path either (gfsa/ops/sweep/; docs/scale_out.md)
        from gfsa.ops.sweep import main_cli as sweep_main

        sweep_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "layers":
        try:
            print(" ".join(map(str, gfsa.select_layers(args.spec, args.num_layers))) or "(none)")
        except gfsa.LayerSpecError as e:
            fail(str(e))
        return
    parser.print_help()
    sys.exit(2 if argv else 0)


def _check_composes(args: list[str]) -> None:
    """A single run's overrides compose and its values pass the config checks, or one line naming the
    unknown option or the bad value (Hydra's own message spans many lines and comes after Lightning has
    been imported)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from gfsa.runner.config import normalise

    kept = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/")) or a.startswith("hydra.searchpath=")]
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=kept)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = re.match(r"Could not override '([^']+)'", first_line(e, with_type=False))
        if unknown:
            key = unknown.group(1)
            msg = f"unknown option '{key}': check its spelling (`python run.py --cfg job` prints every option)"
            if key.startswith("trainer."):
                msg += f"; a Lightning Trainer argument not in conf/trainer/ is added with +{key}=…"
        else:
            msg = first_lines(e, 2)
        fail(msg)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation only a running job resolves (${hydra:…}): checked there
        return
    try:
        normalise(container)  # every value, before Lightning loads
    except ConfigError as e:
        fail(str(e))


def _preflight(args: list[str]) -> None:
    """A multirun on a launcher preset: every cell is composed and checked (and Slurm asked about its
    partition) before hydra-submitit submits anything (gfsa/ops/sweep/cells.py)."""
    from gfsa.ops.sweep import preflight

    try:
        preflight(args)
    except ConfigError as e:
        fail(str(e))


def run_main(argv: list[str] | None = None) -> None:
    """``python run.py [overrides]`` / ``gfsa run``: Hydra-composed runs with one-line errors for bad input."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from gfsa.runner.console import check_overrides, overrides_from_agent_args, quiet_startup
    from gfsa.runner.rundir import disk_error
    from gfsa.runner.selection import objective
    from gfsa.runner.train import DIVERGED_RUNS, EXIT_DIVERGED, run_job

    CONF_DIR = conf_dir()
    args = overrides_from_agent_args(sys.argv[1:] if argv is None else argv)  # W&B agents pass --key=value
    check_overrides(args, CONF_DIR)
    if not any(a.startswith("-") for a in args):  # single runs: report a bad key in one line
        _check_composes(args)
    elif "-m" in args or "--multirun" in args:
        _preflight(args)
    sys.argv = [sys.argv[0], *args]
    quiet_startup()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _job(cfg: DictConfig) -> float | None:
        """Returns the objective (run.objective): what a sweeper that optimises (Optuna) reads."""
        try:
            record = run_job(cfg)
            return objective(record, OmegaConf.to_container(cfg, resolve=True)) if record else None
        except ConfigError as e:
            fail(str(e))
        except OSError as e:  # the filesystem refused something outside training (e.g. a full disk)
            err = disk_error(e, Path(cfg.paths.results_dir))
            if err is None:
                raise
            fail(str(err))

    _job()
    if DIVERGED_RUNS:
        sys.exit(EXIT_DIVERGED)


def evaluate_cli(argv: list[str]) -> None:
    """``gfsa eval RUN_DIR [--ckpt best|last] [--split NAME] [--json] [KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(
        prog="gfsa eval",
        description="Score a finished run again from its checkpoint, on the validation it was scored on "
        "(the record's trainer limits and precision): the numbers equal its result.json's for that checkpoint.",
        epilog="examples: gfsa eval results/vit_mini/digits/gfsa-selected-K3-seed0-… --ckpt best --json | "
        "gfsa eval RUN task.data_dir=/data/imagenet",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (with result.json and checkpoints/)")
    parser.add_argument(
        "--ckpt",
        choices=("best", "last"),
        help="checkpoints/best.ckpt (best validation of the primary metric) or last.ckpt (the end of training); "
        "default: the one the record reports (task.metric_select)",
    )
    parser.add_argument("--split", help="only this evaluation split's metrics (the task's eval splits, e.g. val, test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout, nothing else")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="changes to the recorded config, e.g. task.data_dir=…"
    )
    opts = parser.parse_intermixed_args(argv)  # KEY=VALUE may come before or after the options
    from gfsa.runner.evaluate import evaluate, print_evaluation

    try:
        result = evaluate(opts.run_dir, ckpt=opts.ckpt, split=opts.split, overrides=opts.overrides, quiet=opts.json)
    except ConfigError as e:
        fail(str(e))
    if opts.json:
        import json

        print(json.dumps(result, sort_keys=True))
    else:
        print_evaluation(result)


BENCHMARKS = ("attention", "models", "linear", "decode")
CHECKS = ("gpu",)  # `gfsa bench gpu`: the CUDA tests and the benchmarks at GPU sizes (not part of `all`)


def bench(argv: list[str]) -> None:
    """``gfsa bench NAME [options]`` runs ``gfsa.ops.bench.NAME``; ``gfsa bench all [--fast] [--out-dir DIR]``
    runs the benchmarks in turn, writing ``DIR/NAME.json``."""
    import importlib

    name, rest = (argv[0], argv[1:]) if argv else (None, [])
    if name in CHECKS:
        importlib.import_module(f"gfsa.ops.bench.{name}").main(rest)
        return
    if name not in (*BENCHMARKS, "all"):
        print(
            f"usage: gfsa bench {{{','.join((*BENCHMARKS, *CHECKS))},all}} [options]   (gfsa bench NAME --help)\n"
            "all: [--fast] [--out-dir DIR]; see docs/performance.md",
            file=sys.stderr if name not in ("-h", "--help") else sys.stdout,
        )
        sys.exit(0 if name in ("-h", "--help") else 2)
    runs = [(name, rest)]
    if name == "all":
        p = argparse.ArgumentParser(prog="gfsa bench all")
        p.add_argument("--fast", action="store_true", help="smoke-test sizes")
        p.add_argument("--out-dir", type=Path, help="write NAME.json for each benchmark here")
        opts = p.parse_args(rest)
        runs = [
            (
                b,
                [
                    *(["--fast"] if opts.fast else []),
                    *(["--out", str(opts.out_dir / f"{b}.json")] if opts.out_dir else []),
                ],
            )
            for b in BENCHMARKS
        ]
    for b, args in runs:
        importlib.import_module(f"gfsa.ops.bench.{b}").main(args)


if __name__ == "__main__":  # `python -m gfsa.cli run ...`: what sweep jobs run
    main()
