"""The package list for setuptools (everything else is in pyproject.toml): gfsa's own packages, plus the
top-level ``conf/``, ``experiments/`` and ``slurm/`` folders, which a wheel ships inside the package as
``gfsa.conf``, ``gfsa.experiments`` and ``gfsa.slurm`` (``gfsa/utils/resources.py`` finds them). Found
here rather than listed in pyproject.toml, so that a new config group or subpackage is never left out."""

from setuptools import find_namespace_packages, find_packages, setup

SHIPPED = {"gfsa.conf": "conf", "gfsa.experiments": "experiments", "gfsa.slurm": "slurm"}
NOT_PACKAGES = ["__pycache__", "*.__pycache__"]

packages = find_packages(include=["gfsa", "gfsa.*"], exclude=NOT_PACKAGES)
for package, folder in SHIPPED.items():
    packages += [package, *(f"{package}.{sub}" for sub in find_namespace_packages(folder, exclude=NOT_PACKAGES))]

setup(packages=packages, package_dir=SHIPPED)
