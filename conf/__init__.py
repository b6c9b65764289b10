"""The Hydra config tree; a wheel installs it as the package gfsa.conf (setup.py), so that
``hydra: {searchpath: [pkg://gfsa.conf]}`` can extend it. Hydra reads only the YAML files."""
