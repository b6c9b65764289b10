"""Entry point: ``python run.py [Hydra overrides]`` (e.g. ``backbone=deit task=imagenet gfsa.layers=selected``)."""

from gfsa.cli import run_main

if __name__ == "__main__":
    run_main()
