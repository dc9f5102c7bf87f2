"""Packaging glue that pyproject.toml cannot express: the repository's data folders ship inside the package.

A source checkout keeps ``conf/``, ``calibration/profiles/`` and ``workloads/`` at the top level (where people
edit and commit them); a wheel carries them as ``moesim/conf``, ``moesim/_profiles`` and ``moesim/_traces``,
which ``moesim.resources`` finds. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

DATA = {"moesim.conf": "conf", "moesim._profiles": "calibration/profiles", "moesim._traces": "workloads"}

setup(
    # hydra_plugins is a namespace package shared with hydra's own plugins (no __init__.py of its own).
    packages=find_packages(include=["moesim", "moesim.*"])
    + find_namespace_packages(include=["hydra_plugins", "hydra_plugins.*"])
    + list(DATA),
    package_dir=dict(DATA),
    package_data={
        "moesim": ["py.typed", "**/*.json", "**/*.yaml", "**/*.md"],
        "moesim.conf": ["**/*.yaml"],
        "moesim._profiles": ["*.parquet", "*.json"],
        "moesim._traces": ["*.csv", "*.md"],
    },
)
