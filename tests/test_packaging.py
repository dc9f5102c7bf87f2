"""The library install: torch-free dependencies, shipped data found through moesim.resources, user profiles."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from moesim import resources
from moesim.cost.profile import resolve_profile
from moesim.errors import UserError
from moesim.specs import get_gpu, get_model

REPO = Path(__file__).resolve().parents[1]


def _requirement_names(reqs: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower() for r in reqs}


def test_runtime_dependencies_are_torch_free() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    assert not runtime & {"torch", "nvidia-ml-py", "pynvml", "ray"}, runtime
    assert "torch" in _requirement_names(project["optional-dependencies"]["gpu"])
    assert "moesim[gpu,ray]" in project["optional-dependencies"]["dev"]  # the README's install sets up everything


def test_simulator_side_never_imports_torch() -> None:
    code = ("import sys, moesim.simulate, moesim.report, moesim.sweep, moesim.cost.profile, moesim.config as c;"
            "c.register_configs(); print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_shipped_data_resolves_in_a_checkout() -> None:
    assert (resources.conf_dir() / "config.yaml").is_file()
    assert (resources.shipped_profiles_dir() / "h200__mixtral-8x7b.parquet").is_file()
    assert (resources.traces_dir() / "NOTICE.md").is_file()
    # setup.py maps exactly these folders into the wheel
    setup_py = (REPO / "setup.py").read_text()
    for pkg, folder in (("moesim.conf", "conf"), ("moesim._profiles", "calibration/profiles"),
                        ("moesim._traces", "workloads")):
        assert f'"{pkg}": "{folder}"' in setup_py


def test_user_profiles_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, gpu = get_model("mixtral-8x7b"), get_gpu("h200")
    shipped = resources.shipped_profiles_dir() / "h200__mixtral-8x7b.parquet"
    monkeypatch.setenv("MOESIM_PROFILES_DIR", str(tmp_path))
    assert resources.user_profiles_dir() == tmp_path
    assert resolve_profile("auto", model, gpu) == shipped
    mine = tmp_path / "h200__mixtral-8x7b.parquet"
    mine.write_bytes(shipped.read_bytes())
    assert resolve_profile("auto", model, gpu) == mine
    with pytest.raises(UserError, match=str(tmp_path)):
        resolve_profile("auto", get_model("tiny"), gpu)


def test_calibrator_writes_to_the_user_folder_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moesim.calibrate.config import CalibrateConfig

    monkeypatch.setenv("MOESIM_PROFILES_DIR", str(tmp_path / "mine"))
    assert CalibrateConfig().out_dir() == tmp_path / "mine"
    monkeypatch.delenv("MOESIM_PROFILES_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert CalibrateConfig().out_dir() == tmp_path / "xdg" / "moesim" / "profiles"
    assert CalibrateConfig(out="here").out_dir() == Path("here")


def test_missing_optional_package_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.errors import exit_on_user_error

    @exit_on_user_error
    def needs_torch() -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    with pytest.raises(SystemExit) as exc:
        needs_torch()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install 'moesim[gpu]'" in err[0]

    @exit_on_user_error
    def real_bug() -> None:
        raise ModuleNotFoundError("No module named 'moesim.nope'", name="moesim.nope")

    with pytest.raises(ModuleNotFoundError):  # a missing module of our own is a bug, not a user error
        real_bug()


def test_search_without_ray_runs_locally(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from moesim.search.backends import LocalBackend, make_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    backend = make_backend("ray", 1)
    assert isinstance(backend, LocalBackend)
    assert "pip install 'moesim[ray]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(UserError, match=r"moesim\[ray\]"):  # a cluster address needs ray itself
        make_backend("ray", 1, "127.0.0.1:1")
