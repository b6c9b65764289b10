"""The paper's tables as data; a wheel installs them as the package gfsa.experiments (setup.py)."""
