"""Entry point: ``python run.py [Hydra overrides]`` (e.g. ``backbone=deit task=imagenet gfsa.layers=selected``)."""

from gfsa.train import main

if __name__ == "__main__":
    main()
