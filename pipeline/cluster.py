"""The dask client a run uses: threads by default, a LocalCluster of processes, or a scheduler.

Order of precedence: an explicit ``address`` argument, then the ``DASK_SCHEDULER_ADDRESS``
environment variable, then ``kind`` (``threads``: no client, dask's threaded scheduler in this
process; ``processes``: a :class:`distributed.LocalCluster` of worker processes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

ClusterKind = Literal["threads", "processes"]


@contextmanager
def dask_client(
    kind: ClusterKind = "threads",
    *,
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "4GiB",
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

    Yields
    ------
    distributed.Client or None
        The client; dask computations inside the block run on it.
    """
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
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
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=None,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
