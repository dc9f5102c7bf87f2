"""Name → (class, config dataclass) registries for policies, cost models and workloads.

A component is one file holding its frozen config dataclass and its class, registered by name::

    @POLICIES.register("reconfig", ReconfigConfig)
    class Reconfig(Policy): ...

Hydra's ConfigStore is filled from these registries, so adding a component touches one file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from moesim.errors import UserError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of one kind of component (``"policy"``, ``"cost model"``, ``"workload"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[type[T], type]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name`` with its config dataclass."""

        def deco(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = (cls, config_cls)
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> tuple[type[T], type]:
        """(class, config class) for ``name``; an unknown name lists the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def config(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """The config dataclass of ``name`` filled from ``params`` (unknown keys refused in one line)."""
        _, cfg_cls = self.get(name)
        params = dict(params or {})
        params.pop("name", None)
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        bad = sorted(set(params) - fields)
        if bad:
            from moesim.errors import did_you_mean

            valid = sorted(fields - {"name"})
            raise UserError(f"{self.kind} {name!r}: unknown field {bad[0]!r}{did_you_mean(bad[0], valid)}"
                            f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; valid: {', '.join(valid)}")
        return cfg_cls(**params)

    def build(self, name: str, params: Mapping[str, Any] | Any | None = None, **context: Any) -> T:
        """Instantiate ``name`` from a config dataclass or a mapping, passing ``context`` through."""
        cls, cfg_cls = self.get(name)
        cfg = params if isinstance(params, cfg_cls) else self.config(name, params)
        return cls(cfg, **context)  # type: ignore[call-arg]
