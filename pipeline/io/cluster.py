"""The dask client a run uses: threads by default, a LocalCluster of processes, or a scheduler.

Order of precedence: an explicit ``address`` argument, then the ``DASK_SCHEDULER_ADDRESS``
environment variable, then ``kind`` (``threads``: no client, dask's threaded scheduler in this
process; ``processes``: a :class:`distributed.LocalCluster` of worker processes).

LocalCluster workers are forked from a *forkserver* that has imported numpy, dask, numba and
the pipeline once (:data:`WORKER_PRELOAD`): each worker starts in well under a second instead of
importing everything itself (several seconds per worker on a small machine). ``start_method=
"spawn"`` gives distributed's default.

:class:`pipeline.config.ClusterConfig` is the typed form of these choices (the
``cluster:`` section of ``configs/params.yaml``); :func:`client_from_config` opens the client it
describes. The change core
(:mod:`pipeline.kernels.scale.fused`, :mod:`pipeline.stages.tile`) runs unchanged on any of them:
its tasks are pure functions of picklable inputs, so a remote scheduler with workers that can import
``pipeline`` (and read the stack) gives the same bits as the threads of one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import dask
from pydantic import ValidationError

from pipeline.config import ClusterConfig
from pipeline.errors import ConfigError

ClusterKind = Literal["threads", "processes"]
StartMethod = Literal["forkserver", "spawn"]

WORKER_PRELOAD = (
    "distributed",
    "numpy",
    "pandas",
    "dask.array",
    "numba",
    "xarray",
    "pipeline.kernels.scale.fused",
    "pipeline.stages.tile",
)
"""Modules the forkserver imports once, before it forks LocalCluster workers."""

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
"""Environment variable naming a running scheduler (``tcp://host:8786``)."""


def scheduler_address(address: str | None = None) -> str | None:
    """The scheduler to connect to: ``address``, else ``$DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get(SCHEDULER_ENV) or None


@contextmanager
def dask_client(
    kind: ClusterKind = "threads",
    *,
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "4GiB",
    start_method: StartMethod = "forkserver",
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or None for the threaded scheduler) and close it after.

    Parameters
    ----------
    kind
        ``threads`` (default: no client) or ``processes`` (a LocalCluster).
    address
        Scheduler address (``tcp://host:8786``); overrides ``kind``. When None,
        ``DASK_SCHEDULER_ADDRESS`` is used if set.
    n_workers, threads_per_worker, memory_limit
        Size of a LocalCluster.
    start_method
        How LocalCluster workers start (``forkserver``: from a server that imported
        :data:`WORKER_PRELOAD`; ``spawn``).

    Yields
    ------
    distributed.Client or None
        The client; dask computations inside the block run on it.

    Raises
    ------
    ConfigError
        When ``kind`` is not one of ``threads``/``processes``, or ``start_method`` is unknown.
    """
    if kind not in ("threads", "processes"):
        raise ConfigError(f"cluster kind '{kind}' is unknown: use 'threads' or 'processes'")
    if start_method not in ("forkserver", "spawn"):
        raise ConfigError(f"start method '{start_method}' is unknown: use 'forkserver' or 'spawn'")
    address = scheduler_address(address)
    if address is None and kind == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if address is not None:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": start_method}):
        if start_method == "forkserver":
            _preload_forkserver()
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _preload_forkserver() -> None:
    """Have the forkserver import :data:`WORKER_PRELOAD` (once per process: the server, once
    started, keeps what it imported)."""
    from distributed.utils import get_mp_context

    ctx = get_mp_context()  # sets distributed's own preload list first
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))


def cluster_config(raw: ClusterConfig | Mapping[str, Any] | None) -> ClusterConfig:
    """Validate a ``cluster:`` mapping (None: the defaults).

    Raises
    ------
    ConfigError
        Naming the first key at fault.
    """
    if isinstance(raw, ClusterConfig):
        return raw
    try:
        return ClusterConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "cluster." + ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"key '{key}': {err['msg']}: fix the cluster section") from None


@contextmanager
def client_from_config(raw: ClusterConfig | Mapping[str, Any] | None = None) -> Iterator[Any]:
    """:func:`dask_client` for a :class:`ClusterConfig` (or its mapping; None: defaults).

    Yields
    ------
    distributed.Client or None
        As :func:`dask_client`.
    """
    cfg = cluster_config(raw)
    with dask_client(
        cfg.kind,
        address=cfg.address,
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        memory_limit=cfg.memory_limit,
        start_method=cfg.start_method,
    ) as client:
        yield client
