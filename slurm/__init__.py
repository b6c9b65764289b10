"""The Slurm array template; a wheel installs it as the package gfsa.slurm (setup.py)."""
