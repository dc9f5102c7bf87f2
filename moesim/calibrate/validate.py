"""Held-out validation: whole-model steps the profile was not measured on, timed and predicted.

The batches mix prefill and decode, use sizes off the measurement grids, and spread sequences over several
tenants (each tenant runs its own non-expert set; experts are shared, as after consolidation). The GPU run
times them (``<stem>.validation.parquet``); this module predicts them with the ``profile`` cost model and
reports the error. Torch-free.

    python -m moesim.calibrate.validate profile=calibration/profiles/h200__mixtral-8x7b.parquet
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.cost.base import ExpertGroup, Residency, SeqWork
from moesim.errors import UserError, exit_on_user_error
from moesim.formats.profile import profile_model
from moesim.specs import GPU_SPECS, get_model
from moesim.specs.gpus import H200

Batch = list[tuple[int, int, int]]  # (tenant, new tokens, context) per sequence


def _decodes(rng: np.random.Generator, n: int, lo: int, hi: int, n_tenants: int, first: int = 0) -> Batch:
    ctx = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)).round().astype(int)
    return [((first + i) % n_tenants, 1, int(c)) for i, c in enumerate(ctx)]


def validation_batches(n_tenants: int, scale: str = "full", seed: int = 0) -> list[Batch]:
    """Deterministic held-out batches; ``full`` for a real GPU, ``quick`` for the tiny CPU path."""
    rng = np.random.default_rng(seed + 7919)
    nt = n_tenants
    if scale == "quick":
        return [
            _decodes(rng, 3, 5, 40, nt),
            [(0, 13, 0)],
            [(0, 9, 0), *_decodes(rng, 4, 5, 30, nt, 1)],
        ]
    return [
        _decodes(rng, 1, 700, 700, nt),
        _decodes(rng, 3, 100, 3000, nt),
        _decodes(rng, 13, 100, 3000, nt),
        _decodes(rng, 48, 100, 3000, nt),
        _decodes(rng, 100, 100, 1500, nt),
        _decodes(rng, 170, 64, 900, nt),
        [(0, 77, 0)],
        [(1 % nt, 1500, 0)],
        [(0, 900, 0), (1 % nt, 3100, 0)],
        [(2 % nt, 5000, 0)],
        [(0, 200, 0), (1 % nt, 333, 0), (2 % nt, 45, 0)],
        [(1 % nt, 2700, 1100)],
        [(0, 300, 0), *_decodes(rng, 20, 100, 3000, nt)],
        [(0, 1200, 0), (1 % nt, 50, 0), *_decodes(rng, 60, 100, 2000, nt)],
        [(2 % nt, 512, 1024), *_decodes(rng, 12, 200, 4000, nt)],
        [(1 % nt, 2500, 0), *_decodes(rng, 150, 64, 700, nt)],
        [(0, 30, 0), *_decodes(rng, 7, 100, 3000, nt)],
        [(0, 700, 0), (1 % nt, 90, 0), (2 % nt, 4000, 0), *_decodes(rng, 33, 100, 2500, nt)],
    ]


def _logu(rng: np.random.Generator, lo: float, hi: float) -> int:
    """One integer drawn log-uniformly in [lo, hi]."""
    return round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def draw_heldout_batches(n_tenants: int, scale: str = "full", seed: int = 1) -> list[Batch]:
    """A held-out set drawn afresh: the kinds of ``validation_batches`` (6 decodes, 6 prefills, 6 mixed
    prefill + decode over three tenants), with every size, tenant and context drawn from ``seed``."""
    rng = np.random.default_rng(seed + 104729)
    nt = n_tenants
    t = lambda: int(rng.integers(nt))  # noqa: E731
    if scale == "quick":
        return [
            _decodes(rng, _logu(rng, 2, 5), 5, 40, nt, t()),
            [(t(), _logu(rng, 6, 20), 0)],
            [(t(), _logu(rng, 4, 12), 0), *_decodes(rng, _logu(rng, 2, 5), 5, 30, nt, t())],
        ]

    def dec(lo_n: int, hi_n: int, lo_c: int = 64, hi_c: int = 4000) -> Batch:
        return _decodes(rng, _logu(rng, lo_n, hi_n), _logu(rng, lo_c, 200), _logu(rng, 700, hi_c), nt, t())

    return [
        _decodes(rng, 1, 200, 3000, nt, t()),
        dec(2, 6), dec(7, 25), dec(26, 80), dec(81, 140), dec(141, 220, 64, 1200),
        [(t(), _logu(rng, 30, 150), 0)],
        [(t(), _logu(rng, 800, 2500), 0)],
        [(0, _logu(rng, 500, 4000), 0), (1 % nt, _logu(rng, 500, 4000), 0)],
        [(t(), _logu(rng, 3500, 6000), 0)],
        [(0, _logu(rng, 30, 400), 0), (1 % nt, _logu(rng, 30, 400), 0), (2 % nt, _logu(rng, 30, 400), 0)],
        [(t(), _logu(rng, 1000, 3000), _logu(rng, 500, 2000))],
        [(t(), _logu(rng, 150, 500), 0), *dec(10, 30)],
        [(t(), _logu(rng, 800, 1600), 0), (t(), _logu(rng, 30, 100), 0), *dec(40, 80, 64, 2000)],
        [(t(), _logu(rng, 300, 800), _logu(rng, 500, 1500)), *dec(8, 20)],
        [(t(), _logu(rng, 1800, 3000), 0), *dec(100, 200, 64, 700)],
        [(t(), _logu(rng, 16, 60), 0), *dec(4, 10)],
        [(0, _logu(rng, 500, 900), 0), (1 % nt, _logu(rng, 60, 120), 0), (2 % nt, _logu(rng, 3000, 4500), 0),
         *dec(25, 45, 64, 2500)],
    ]


def batch_kind(batch: Batch) -> str:
    """``decode``, ``prefill`` or ``mixed`` (prefill and decode sequences in one step)."""
    pre = any(n > 1 or c == 0 for _, n, c in batch)
    dec = any(n == 1 and c > 0 for _, n, c in batch)
    return "mixed" if pre and dec else ("prefill" if pre else "decode")


def describe(batch: Batch) -> str:
    """One line: tenants, prefill lengths, decode count and mean context."""
    pre = [(n, c) for _, n, c in batch if n > 1 or c == 0]
    dec = [c for _, n, c in batch if n == 1 and c > 0]
    parts = []
    if pre:
        parts.append("prefill " + ",".join(f"{n}" + (f"@{c}" if c else "") for n, c in pre))
    if dec:
        parts.append(f"decode {len(dec)}×ctx~{int(np.mean(dec))}")
    k = len({t for t, _, _ in batch})
    return f"{' + '.join(parts)} ({k} tenant{'' if k == 1 else 's'})"


def shared_residency(model_name: str) -> Residency:
    """One GPU-resident expert group shared by every tenant (the validation engine's layout)."""
    m = get_model(model_name)
    return Residency(groups=(ExpertGroup(frozenset(range(64)), m.n_expert_positions, True),))


def residency_from(groups: list[dict]) -> Residency:
    """The residency recorded with a validation run (``meta["validation_residency"]``)."""
    return Residency(groups=tuple(ExpertGroup(frozenset(g["tenants"]), int(g["positions"]), bool(g["on_gpu"]))
                                  for g in groups))


def predict(cost: object, batches: list[Batch], model_name: str, res: Residency | None = None) -> np.ndarray:
    """Predicted step seconds of each batch with cost model ``cost`` (shared experts unless ``res``)."""
    res = res or shared_residency(model_name)
    return np.array([cost.step(tuple(SeqWork(t, n, c) for t, n, c in b), res).total_s  # type: ignore[attr-defined]
                     for b in batches])


def gpu_spec_for(meta: dict) -> object:
    """The GPUSpec a profile was measured on (a CPU profile borrows the H200's fields under its own name)."""
    name = meta.get("gpu", "")
    return GPU_SPECS.get(name) or dataclasses.replace(H200, name=name, sms=int(meta.get("sms", 1)),
                                                      mig_sms=int(meta.get("sms", 1)))


def heldout_path(profile_path: str | Path, heldout: str = "") -> Path:
    """The held-out file of a profile: ``<stem>.validation.parquet`` (``heldout`` empty), the drawn set
    ``<stem>.validation.<heldout>.parquet`` (e.g. ``seed1``), or ``heldout`` itself when it is a .parquet path."""
    p = Path(profile_path)
    if heldout.endswith(".parquet"):
        return Path(heldout)
    return p.with_name(p.stem + ".validation" + (f".{heldout}" if heldout else "") + ".parquet")


def report(profile_path: str | Path, heldout: str = "", **cost_cfg: object) -> pd.DataFrame:
    """Measured vs predicted for a profile's held-out file (see ``heldout_path``); seconds and percent, with
    each batch's ``kind`` (decode, prefill, mixed).

    ``cost_cfg`` overrides ``ProfileCostConfig`` fields (e.g. ``step_residual="on"``).
    """
    from moesim.cost.profile import ProfileCost, ProfileCostConfig
    from moesim.formats.profile import read_profile

    p = Path(profile_path)
    _, meta = read_profile(p)
    vpath = heldout_path(p, heldout)
    if not vpath.is_file():
        raise UserError(f"{vpath}: no validation file (run the calibrator with validate=true"
                        + (f" heldout_seed={heldout.removeprefix('seed')}" if heldout.startswith("seed") else "")
                        + ")")
    v = pd.read_parquet(vpath)
    model = profile_model(meta)
    cost = ProfileCost(ProfileCostConfig(path=str(p), **cost_cfg), model, gpu_spec_for(meta))  # type: ignore[arg-type]
    batches = [[tuple(s) for s in json.loads(x)] for x in v["seqs"]]
    groups = meta.get("validation_residency")
    res = residency_from(groups) if groups else None
    v = v.assign(predicted_s=predict(cost, batches, model.name, res),  # type: ignore[arg-type]
                 kind=[batch_kind(b) for b in batches])
    v["error_pct"] = 100.0 * (v["predicted_s"] - v["time_s_median"]) / v["time_s_median"]
    return v


@dataclass(frozen=True)
class ValidateConfig:
    """Command line of ``python -m moesim.calibrate.validate``.

    Attributes:
        profile: a calibrated profile (.parquet) with its held-out validation steps.
        step_residual: the profile cost model's step_residual (auto, on or off).
        routing_skew: the profile cost model's routing_skew (Zipf exponent; 0 = uniform routing).
        heldout: which held-out file: empty for ``<stem>.validation.parquet``, ``seed<N>`` for the set drawn
            with ``heldout_seed=N``, or a .parquet path.
        tenant_terms: the profile cost model's tenant_terms (auto, off).
    """

    profile: str = ""
    step_residual: str = "auto"
    routing_skew: float = 0.0
    heldout: str = ""
    tenant_terms: str = "auto"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``profile=PATH [step_residual=auto|on|off]``: print measured vs predicted and the median |error|."""
    from moesim.cli import parse_key_values

    cfg = parse_key_values(sys.argv[1:] if argv is None else argv, ValidateConfig,
                           prog="python -m moesim.calibrate.validate", positional="profile",
                           summary="A profile's held-out whole-model steps: measured against predicted.",
                           choices={"step_residual": ("auto", "on", "off"), "tenant_terms": ("auto", "off")},
                           examples=("python -m moesim.calibrate.validate "
                                     "profile=calibration/profiles/h200__mixtral-8x7b.parquet",))
    if not cfg.profile:
        raise UserError("profile=: give a profile, e.g. profile=calibration/profiles/h200__mixtral-8x7b.parquet")
    args = {"profile": cfg.profile}
    extra = {"step_residual": cfg.step_residual, "routing_skew": cfg.routing_skew, "tenant_terms": cfg.tenant_terms}
    v = report(args["profile"], cfg.heldout, **extra)
    ok = v[v["status"] == "ok"]
    print(f"{'batch':60s} {'measured ms':>12s} {'predicted ms':>12s} {'error':>8s}")
    for r in ok.itertuples():
        print(f"{r.description:60s} {1e3 * r.time_s_median:12.2f} {1e3 * r.predicted_s:12.2f} {r.error_pct:+7.1f}%")
    err = ok["error_pct"].abs()
    for kind, g in ok.groupby("kind", sort=False):
        e = g["error_pct"]
        print(f"  {kind:8s} {len(g):2d} steps: median |error| {e.abs().median():.2f}% · max {e.abs().max():.2f}% "
              f"(signed {e.min():+.1f}% … {e.max():+.1f}%)")
    print(f"median |error| {err.median():.2f}% · mean {err.mean():.2f}% · max {err.max():.2f}% over {len(ok)} "
          "held-out steps")


if __name__ == "__main__":
    main()
