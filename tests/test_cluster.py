"""Tests of the dask client choice, and of the change core on a cluster of worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pytest

from pipeline.config import DetectConfig
from pipeline.errors import ConfigError
from pipeline.io.cluster import (
    SCHEDULER_ENV,
    ClusterConfig,
    client_from_config,
    cluster_config,
    dask_client,
    scheduler_address,
)
from pipeline.kernels.scale.change import change_core
from pipeline.kernels.scale.fused import CoreParams
from pipeline.simulate.tile import SyntheticStack
from pipeline.stages.tile import detect_tile

STACK = SyntheticStack((120, 110), 3, seed=5, object_spacing_px=40, period_px=127)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes (one thread each)."""
    with dask_client("processes", n_workers=2, threads_per_worker=1, memory_limit="1GiB") as c:
        yield c


def _pair() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(2)
    before = rng.normal(0.2, 0.01, (4, 90, 80)).astype(np.float32)
    after = before + rng.normal(0.0, 0.01, before.shape).astype(np.float32)
    after[:, 40:45, 30:36] += 0.15
    ok = rng.random((90, 80)) > 0.05
    return before, after, ok, np.ones_like(ok)


def _params() -> CoreParams:
    return CoreParams(
        gain=np.ones(4, np.float32),
        offset=np.zeros(4, np.float32),
        sigma=np.full(4, 0.014, np.float32),
        whitening=np.eye(4, dtype=np.float32),
        group_level=np.zeros((1, 4), np.float32),
        group_sigma=np.full((1, 4), 0.014, np.float32),
        seed_threshold=28.0,
        grow_threshold=13.0,
        registration_noise_px=0.2,
        resampling_blur_px2=0.125,
    )


def test_change_core_on_worker_processes_equals_local(client: Any) -> None:
    before, after, bok, aok = _pair()
    local = change_core(before, after, bok, aok, _params())
    lazy = change_core(
        da.from_array(before, chunks=(4, 32, 32)),
        da.from_array(after, chunks=(4, 32, 32)),
        da.from_array(bok, chunks=32),
        da.from_array(aok, chunks=32),
        _params(),
    )
    score, cls = client.compute([lazy.score, lazy.cls], sync=True)
    assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_array_equal(score, local.score)
    np.testing.assert_array_equal(cls, local.cls)
    assert (cls == 2).sum() >= 30  # the planted change is there to be compared


def test_detect_tile_on_worker_processes_equals_local(client: Any) -> None:
    cfg = DetectConfig()
    local = detect_tile(STACK, cfg, chunk_px=48, n_threads=1)
    remote = detect_tile(STACK, cfg, chunk_px=48, client=client)
    assert len(local.features) >= 4
    assert remote.features == local.features
    assert remote.pairs == local.pairs


def test_scheduler_address_from_the_environment(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = client.scheduler.address
    monkeypatch.setenv(SCHEDULER_ENV, address)
    assert scheduler_address() == address
    with dask_client() as remote:  # threads asked, but the environment names a scheduler
        assert remote is not None
        assert remote.scheduler.address == address
    assert client.status == "running"  # closing a connected client leaves the cluster up


def test_threads_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    with dask_client() as c:
        assert c is None
    with client_from_config({"kind": "threads"}) as c:
        assert c is None


def test_cluster_config_is_validated() -> None:
    assert cluster_config(None) == ClusterConfig()
    assert cluster_config({"kind": "processes", "n_workers": 3}).n_workers == 3
    with pytest.raises(ConfigError, match=r"cluster\.workers"):
        cluster_config({"workers": 3})
    with pytest.raises(ConfigError, match=r"cluster\.kind"):
        cluster_config({"kind": "gpu"})
    with pytest.raises(ConfigError, match=r"cluster\.start_method"):
        cluster_config({"start_method": "fork"})
    assert cluster_config({"start_method": "spawn"}).start_method == "spawn"
    with pytest.raises(ConfigError, match="unknown"):
        with dask_client("gpu"):  # type: ignore[arg-type]
            pass
