"""Where moesim's shipped data lives: hydra configs, measured profiles, the Azure traces.

In a source checkout (``pip install -e .``) they are the repository's top-level ``conf/``,
``calibration/profiles/`` and ``workloads/`` folders; a wheel (``pip install .`` / ``pip install moesim``)
carries the same files inside the package as ``moesim/conf``, ``moesim/_profiles`` and ``moesim/_traces``
(setup.py maps them). Every reader goes through these functions, so both installs find the same files.

Profiles the user measures go to :func:`user_profiles_dir` (never into the installed package) and are
found there first by ``cost=profile``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent

#: package folder in a wheel → repository folder in a source checkout
_SHIPPED = {"conf": "conf", "_profiles": "calibration/profiles", "_traces": "workloads"}


def _shipped(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _REPO / _SHIPPED[name]


def conf_dir() -> Path:
    """The hydra config folder (``config.yaml`` and its groups)."""
    return _shipped("conf")


def shipped_profiles_dir() -> Path:
    """The calibrated profiles that ship with moesim (measured on the lent H200, or marked derived)."""
    return _shipped("_profiles")


def traces_dir() -> Path:
    """The shipped request traces (Azure LLM inference 2023, CC-BY 4.0; see NOTICE.md there)."""
    return _shipped("_traces")


def user_profiles_dir() -> Path:
    """Where ``python -m moesim.calibrate`` writes new profiles by default.

    ``$MOESIM_PROFILES_DIR`` if set, else ``$XDG_DATA_HOME/moesim/profiles`` (``~/.local/share/moesim/profiles``).
    """
    env = os.environ.get("MOESIM_PROFILES_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "moesim" / "profiles"


def profile_search_path() -> list[Path]:
    """Folders ``cost=profile`` (``path=auto``) searches, first match wins: the user's, then the shipped ones."""
    return [user_profiles_dir(), shipped_profiles_dir()]
