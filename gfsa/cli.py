"""The ``gfsa`` command: ``gfsa run`` (one run), ``sweep``, ``layers``, ``report``, ``analyze`` and ``bench``."""

from __future__ import annotations

import argparse
import sys

import gfsa


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
    # report/analyze parse their own options (gfsa/report.py, gfsa/analysis.py; docs/reports.md)
    sub.add_parser("report", help="improvement tables and charts vs baselines and the paper", add_help=False)
    sub.add_parser("analyze", help="oversmoothing analysis of a trained run", add_help=False)
    sub.add_parser("bench", help="performance benchmarks: attention | models | linear | all (--help)", add_help=False)
    if argv[:1] == ["report"]:  # no Lightning on this path
        from gfsa.report import main_cli as report_main

        report_main(argv[1:])
        return
    if argv[:1] == ["analyze"]:
        from gfsa.analysis import main_cli as analyze_main

        analyze_main(argv[1:])
        return
    if argv[:1] == ["bench"]:  # the scripts in benchmarks/ parse their own options (docs/performance.md)
        bench(argv[1:])
        return
    if argv[:1] == ["run"]:  # Hydra parses the rest itself
        from gfsa.train import main as run_main

        sys.argv = ["gfsa run", *argv[1:]]
        run_main(argv[1:])
        return
    if argv[:1] == ["sweep"]:  # no Lightning on this path either (gfsa/sweep.py; docs/scale_out.md)
        from gfsa.sweep import main_cli as sweep_main

        sweep_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "layers":
        try:
            print(" ".join(map(str, gfsa.select_layers(args.spec, args.num_layers))) or "(none)")
        except gfsa.LayerSpecError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    parser.print_help()
    sys.exit(2 if argv else 0)


BENCHMARKS = ("attention", "models", "linear")


def bench(argv: list[str]) -> None:
    """``gfsa bench NAME [options]`` runs ``benchmarks/NAME.py``; ``gfsa bench all [--fast] [--out-dir DIR]``
    runs the three in turn, writing ``DIR/NAME.json``."""
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    name, rest = (argv[0], argv[1:]) if argv else (None, [])
    if name not in (*BENCHMARKS, "all"):
        print(
            f"usage: gfsa bench {{{','.join(BENCHMARKS)},all}} [options]   (gfsa bench NAME --help)\n"
            "all: [--fast] [--out-dir DIR]; see docs/performance.md",
            file=sys.stderr if name not in ("-h", "--help") else sys.stdout,
        )
        sys.exit(0 if name in ("-h", "--help") else 2)
    if not all((root / f"{b}.py").is_file() for b in BENCHMARKS):
        print(f"error: gfsa bench runs the scripts in {root}: use a source checkout of the suite", file=sys.stderr)
        sys.exit(2)
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
    saved = sys.argv
    try:
        for b, args in runs:
            sys.argv = [str(root / f"{b}.py"), *args]
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = saved


if __name__ == "__main__":  # `python -m gfsa.cli run ...`: what sweep jobs run
    main()
