"""Pytest configuration: GPU-marked tests skip without CUDA; the user profile folder is a temporary one."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests when no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU either way
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_profiles(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's own profile folder (``moesim.resources.user_profiles_dir``)."""
    import os

    os.environ["MOESIM_PROFILES_DIR"] = str(tmp_path_factory.mktemp("user-profiles"))
