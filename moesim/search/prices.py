"""The $/GPU-hour table of the capacity search: a small YAML file the user can edit.

The shipped default (``prices.yaml`` beside this module) holds APPROXIMATE list prices, labelled as such in
the file and in every output that uses them. ``search.prices=FILE`` replaces it::

    currency: USD
    unit: per GPU-hour
    source: my provider's quote, 2026-05
    prices:
      h200: 3.50
      a100-80gb: 1.10
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError

DEFAULT_PRICES = Path(__file__).resolve().parent / "prices.yaml"


@dataclass(frozen=True)
class PriceTable:
    """$ per GPU-hour by GPU name.

    Attributes:
        prices: GPU name → price per GPU-hour (in ``currency``).
        currency: e.g. ``"USD"``.
        source: where the numbers come from (shown in the report).
        path: the file read.
    """

    prices: dict[str, float]
    currency: str
    source: str
    path: str

    def per_hour(self, gpu: str, count: int = 1) -> float:
        """Price of ``count`` GPUs of type ``gpu`` for one hour."""
        if gpu not in self.prices:
            raise UserError(f"{self.path}: no price for gpu {gpu!r}; priced: {', '.join(sorted(self.prices))} "
                            "(add it under prices:, or leave it out of search.gpus)")
        return self.prices[gpu] * count


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read and check a price table (the shipped default when ``path`` is empty); UserError in one line."""
    import yaml

    from moesim.specs import GPU_SPECS

    p = Path(path) if path else DEFAULT_PRICES
    if not p.is_file():
        raise UserError(f"search.prices={p}: no such file")
    try:
        doc: Any = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise UserError(f"{p}: not valid YAML{f' (line {line + 1})' if line is not None else ''}") from None
    from moesim.errors import did_you_mean

    fields = ["currency", "unit", "source", "prices"]
    bad = sorted(str(k) for k in doc if k not in fields) if isinstance(doc, dict) else []
    if bad:  # per_gpu_hour: {...} read "expected a mapping with 'prices: ...'", sorce: was ignored
        raise UserError(f"{p}: unknown field {bad[0]!r}{did_you_mean(bad[0], fields)}; valid: {', '.join(fields)}")
    if not isinstance(doc, dict) or not isinstance(doc.get("prices"), dict) or not doc["prices"]:
        raise UserError(f"{p}: expected a mapping with 'prices: {{<gpu>: <$ per GPU-hour>, ...}}'")
    prices: dict[str, float] = {}
    for gpu, value in doc["prices"].items():
        if gpu not in GPU_SPECS:
            raise UserError(f"{p}: prices.{gpu}: unknown gpu{did_you_mean(str(gpu), sorted(GPU_SPECS))}; valid: "
                            f"{', '.join(sorted(GPU_SPECS))}")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value <= 0:
            raise UserError(f"{p}: prices.{gpu}={value!r}: must be a number > 0 (price per GPU-hour)")
        prices[str(gpu)] = float(value)
    return PriceTable(prices=prices, currency=str(doc.get("currency", "USD")),
                      source=str(doc.get("source", "")), path=str(p))
