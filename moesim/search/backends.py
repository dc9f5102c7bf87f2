"""Where trials run: in this process or a process pool (``local``), or as Ray tasks (``ray``).

A backend maps ``run_trial`` over a list of trial configs and returns the summaries in the same order. The
search hands it whole rounds of independent trials and never depends on the order they finish in, so every
backend gives the same answer.

Ray: without an address a local Ray is started with ``workers`` CPUs (``ray.init(num_cpus=...)``); with
``search.ray_address=HOST:PORT`` (or ``auto``) the same command joins an existing cluster, whose nodes must
have moesim installed (``pip install moesim`` at the same version) since tasks import it there.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from moesim.errors import UserError
from moesim.search.trial import run_trial

BACKENDS = ("ray", "local")


class Backend(Protocol):
    """Runs trials; ``workers`` is how many run at once."""

    name: str
    workers: int

    def map(self, configs: Sequence[dict[str, Any]], progress: Callable[[int], None] | None = None
            ) -> list[dict[str, Any]]:
        """``run_trial`` of each config, in order; ``progress(k)`` after each k finished."""

    def close(self) -> None:
        """Release processes / disconnect."""


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


class LocalBackend:
    """Serial in this process (``workers == 1``) or a pool of ``workers`` spawned processes."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool: Any = None

    def map(self, configs: Sequence[dict[str, Any]], progress: Callable[[int], None] | None = None
            ) -> list[dict[str, Any]]:
        if self.workers == 1 or len(configs) <= 1:
            out = []
            for c in configs:
                out.append(run_trial(c))
                if progress:
                    progress(1)
            return out
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        futures = [self._pool.submit(run_trial, c) for c in configs]
        if progress:
            from concurrent.futures import as_completed

            for _ in as_completed(futures):
                progress(1)
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayBackend:
    """Ray tasks of one CPU each; a local Ray of ``workers`` CPUs, or the cluster at ``address``."""

    name = "ray"

    def __init__(self, workers: int, address: str = "") -> None:
        try:
            import ray
        except ImportError:
            raise UserError("search.backend=ray needs ray: pip install 'moesim[ray]' (or use search.backend=local)"
                            ) from None
        self._ray = ray
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR, "configure_logging": True}
        if address:
            _reachable(address)
            kwargs["address"] = address
        else:  # "local": always a new instance, never a cluster found on this machine
            kwargs["address"] = "local"
            kwargs["num_cpus"] = max(1, int(workers))
            kwargs["object_store_memory"] = 100 * 1024**2  # trial configs and summaries are small
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise UserError(f"search.ray_address={address or '(local)'}: cannot start or join {where}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", workers)))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_trial)

    def map(self, configs: Sequence[dict[str, Any]], progress: Callable[[int], None] | None = None
            ) -> list[dict[str, Any]]:
        ray = self._ray
        refs = [self._remote.remote(c) for c in configs]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if progress:
                progress(len(done))
        return list(ray.get(refs))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) Ray address answers a TCP connection within ``timeout_s``;
    without this check ``ray.init`` waits minutes on an address nobody listens on."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: ray resolves them (and fails fast when there is no cluster)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"search.ray_address={address}: cannot start or join the Ray cluster at {address}: "
                        f"no answer ({exc.strerror or type(exc).__name__}); start it with `ray start --head` "
                        "or leave search.ray_address empty for a local Ray") from None


def make_backend(name: str, workers: int, address: str = "") -> Backend:
    """The backend ``name`` with ``workers`` at once (0: every CPU of this machine)."""
    workers = int(workers) or default_workers()
    if name == "local":
        if address:
            print("moesim: search.ray_address is ignored with search.backend=local", file=sys.stderr)
        return LocalBackend(workers)
    if name == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None and not address:
            # the library install comes without ray (extra 'ray'): the local backend gives the same answer
            print("moesim: ray is not installed: trials run in a local process pool (the same answer); "
                  "pip install 'moesim[ray]' for Ray", file=sys.stderr)
            return LocalBackend(workers)
        return RayBackend(workers, address)
    raise UserError(f"search.backend={name!r}: unknown; valid: {', '.join(BACKENDS)}")
