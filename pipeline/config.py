"""Typed configuration, read once from ``configs/*.yaml`` and validated at the edge.

Inside the pipeline code gets :class:`Config` objects, never dicts. Unknown keys are errors
(``extra="forbid"``), so a typo in a config file is reported, not ignored.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.detect_config import DetectConfig
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "AlertsConfig",
    "CatalogConfig",
    "ClusterConfig",
    "Config",
    "CoregisterConfig",
    "DatesConfig",
    "DemoConfig",
    "DetectConfig",
    "EvaluateConfig",
    "LoadConfig",
    "NetworkConfig",
    "WatchConfig",
    "load_config",
]

DEFAULT_CONFIG = Path("configs/params.yaml")
"""Config used when none is given (relative to the project root)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogConfig(_Strict):
    """Where scenes come from."""

    url: str = Field(
        "demo_catalog/catalog.json",
        description="A STAC API URL (http/https) or the path of a local static catalog.json.",
    )
    collection: str = Field("sentinel-2-l2a", description="Collection id to search.")
    max_cloud_cover: float = Field(
        80.0, ge=0, le=100, description="Drop Items whose eo:cloud_cover (percent) is higher."
    )
    max_items: int = Field(2000, gt=0, description="Stop searching after this many Items.")
    signing: Literal["auto", "none", "planetary-computer"] = Field(
        "auto",
        description="How asset hrefs are signed before reading: planetary-computer (a SAS token "
        "from the planetary-computer package, fetched just before each read and renewed once "
        "on HTTP 403), none, or auto (planetary-computer when catalog.url is on "
        "planetarycomputer.microsoft.com, none otherwise).",
    )
    token_url: str | None = Field(
        None,
        description="SAS token endpoint of planetary-computer signing; None keeps the "
        "package's own (the PC_SDK_SAS_URL environment variable, else "
        "https://planetarycomputer.microsoft.com/api/sas/v1/token).",
    )
    signed_hosts: tuple[str, ...] = Field(
        (".blob.core.windows.net",),
        description="Asset hosts whose hrefs are signed: a host name, host:port, or a suffix "
        "starting with a dot (Planetary Computer's Azure Blob Storage accounts).",
    )


class DatesConfig(_Strict):
    """The period to search, inclusive."""

    start: dt.date = Field(dt.date(2024, 11, 1), description="First day of the period.")
    end: dt.date = Field(dt.date(2025, 1, 31), description="Last day of the period.")

    @model_validator(mode="after")
    def _ordered(self) -> DatesConfig:
        if self.end < self.start:
            raise ValueError(f"dates.end {self.end} is before dates.start {self.start}: swap them")
        return self


class LoadConfig(_Strict):
    """How Items become a cube on the site grid."""

    resolution_m: float = Field(10.0, gt=0, description="Pixel size of the site grid, metres.")
    bands: tuple[str, ...] = Field(
        ("blue", "green", "red", "nir", "swir16", "swir22"),
        description="Bands to load, in the project's vocabulary (Earth Search v1 asset keys).",
    )
    min_valid_fraction: float = Field(
        0.25, ge=0, le=1, description="Drop a date when less of its AOI than this is valid."
    )
    cloud_dilation_px: int = Field(
        3, ge=0, description="Grow the SCL cloud and shadow mask by this many pixels."
    )
    chunk_px: int = Field(512, gt=0, description="Spatial chunk size of the lazy cube.")


class CoregisterConfig(_Strict):
    """Sub-pixel co-registration of each date to a reference date."""

    band: str = Field("nir", description="Band the shift is estimated on.")
    upsample: int = Field(100, ge=1, description="Upsampling factor of the phase correlation.")
    max_shift_px: float = Field(
        4.0, gt=0, description="A larger estimated shift marks the date failed."
    )
    min_valid_fraction: float = Field(
        0.2, ge=0, le=1, description="Fewer valid pixels shared with the reference: failed."
    )
    min_quality: float = Field(
        0.3, ge=0, le=1, description="Lower correlation quality than this marks the date failed."
    )
    max_residual_px: float = Field(
        0.5,
        gt=0,
        description="After the shifts are removed, each date is matched to the reference once "
        "more; a residual shift larger than this (px) is flagged in coreg.json and the report "
        "(the date is still used: look at it).",
    )


class EvaluateConfig(_Strict):
    """Scoring against ground truth, where it exists (the demo catalog)."""

    min_object_size_m: float = Field(
        30.0, ge=0, description="Truth objects smaller than this (longest side) are not scored."
    )


class DemoConfig(_Strict):
    """The generated demo catalog."""

    out: str = Field("demo_catalog", description="Folder the demo catalog is written to.")
    seed: int = Field(20241208, description="Seed of the generator; same seed, same catalog.")


class NetworkConfig(_Strict):
    """Retries and timeouts of everything read over the network (STAC API requests, COG reads)."""

    retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Retries of a STAC API request (HTTP 429 and 5xx, refused connections, "
        "timeouts) and of a COG read over HTTP (GDAL_HTTP_MAX_RETRY) before giving up.",
    )
    backoff_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="First wait between retries, seconds; doubled at each retry (STAC requests "
        "via urllib3 Retry backoff, COG reads via GDAL_HTTP_RETRY_DELAY).",
    )
    timeout_s: float = Field(
        30.0,
        gt=0,
        description="Connect and read timeout of one STAC request, and GDAL_HTTP_TIMEOUT of "
        "one COG request, seconds.",
    )


class WatchConfig(_Strict):
    """The unattended `basewatch watch` mode (see docs/operations.md)."""

    store: str | None = Field(
        None,
        description="History database (SQLite) of processed Items, detections, occupancy and "
        "alerts; default <data_dir>/watch.sqlite.",
    )
    lock: str | None = Field(
        None,
        description="Lock file that stops two watch runs overlapping; default "
        "<data_dir>/.watch.lock.",
    )
    history_dates: int = Field(
        6,
        ge=1,
        description="Usable dates before the first new one that are reloaded with it, so the "
        "detector has each pixel's last valid view (more: fewer pixels left unscored under "
        "long cloud, slower runs).",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Runs that retry the newest date when one of its assets cannot be read; "
        "then the date is skipped for good (a failed date followed by a good one is skipped "
        "at once).",
    )
    follow: bool = Field(
        False,
        description="Search up to today (UTC) instead of dates.end: for a cron job that runs "
        "for months.",
    )
    adopt: bool = Field(
        True,
        description="On a site's first watch run, take the outputs of `dvc repro` / "
        "`basewatch run` (items.json, load.json, coreg.json, detections.geojson) as the "
        "processed history instead of processing the whole period again.",
    )


class AlertsConfig(_Strict):
    """Where new removals are reported by `basewatch watch`."""

    min_confidence: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Alert on new removals with at least this (calibrated) confidence: the "
        "probability that a detection like it is a real change.",
    )
    file: str | None = Field(
        None,
        description="JSON-lines alert file (one alert per line, each sent once); default "
        "<data_dir>/alerts.jsonl.",
    )
    webhook_url: str | None = Field(
        None,
        description="Also POST each alert as JSON to this http(s) URL. Prefer webhook_url_env "
        "for URLs that hold a secret.",
    )
    webhook_url_env: str = Field(
        "BASEWATCH_WEBHOOK_URL",
        description="Environment variable read for the webhook URL when webhook_url is unset.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST, seconds.")
    retries: int = Field(
        3, ge=0, le=20, description="Retries of a webhook POST (5xx, 429, network errors)."
    )
    backoff_s: float = Field(
        1.0, ge=0, le=60, description="First wait between webhook retries; doubled each time."
    )
    max_attempts: int = Field(
        20,
        ge=1,
        description="Runs that try again to deliver an alert the webhook did not accept; then "
        "it is marked failed.",
    )


class ClusterConfig(BaseModel):
    """Where dask work runs (the ``cluster:`` section; opened by
    :func:`pipeline.io.cluster.client_from_config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["threads", "processes"] = Field(
        "threads",
        description="threads: dask's threads in this process; processes: a LocalCluster of "
        "worker processes on this machine. Ignored when a scheduler address is given.",
    )
    address: str | None = Field(
        None,
        description="Scheduler of a running cluster (tcp://host:8786). None: use "
        "$DASK_SCHEDULER_ADDRESS when set, else `kind`.",
    )
    n_workers: int = Field(2, ge=1, description="Worker processes of a LocalCluster.")
    threads_per_worker: int = Field(1, ge=1, description="Threads of each LocalCluster worker.")
    memory_limit: str = Field(
        "4GiB", description="Memory each LocalCluster worker may use before it spills or pauses."
    )
    start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver",
        description="How LocalCluster workers start: forkserver (forked from a process that "
        "imported the pipeline once: fast) or spawn (each imports everything).",
    )


class Config(_Strict):
    """The whole configuration of a run."""

    sites: tuple[str, ...] = Field(("khmeimim", "tartus"), description="Sites to process.")
    catalog: CatalogConfig = CatalogConfig()
    dates: DatesConfig = DatesConfig()
    load: LoadConfig = LoadConfig()
    coregister: CoregisterConfig = CoregisterConfig()
    detect: DetectConfig = DetectConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    demo: DemoConfig = DemoConfig()
    network: NetworkConfig = NetworkConfig()
    watch: WatchConfig = WatchConfig()
    alerts: AlertsConfig = AlertsConfig()
    cluster: ClusterConfig = ClusterConfig()
    data_dir: str = Field("data", description="Folder of per-site intermediate outputs.")
    reports_dir: str = Field("reports", description="Folder of per-site HTML reports.")
    metrics_dir: str = Field("metrics", description="Folder of per-site metrics files.")
    seeds_dir: str = Field("seeds", description="Folder holding sites/ and scenario/.")
    kind: Literal["basewatch-config"] = Field(
        "basewatch-config", description="Marks the file as a basewatch config."
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}': remove it or check its spelling"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key '{key}': {msg}"


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a config file.

    Parameters
    ----------
    path
        YAML file; ``configs/params.yaml`` when None. A missing default file gives the defaults.

    Returns
    -------
    Config
        The validated configuration.

    Raises
    ------
    ConfigError
        With a one-line message naming the file and the key at fault.
    """
    p = Path(path) if path is not None else DEFAULT_CONFIG
    if not p.exists():
        if path is None:
            return Config()
        raise ConfigError(f"config file {p} does not exist: give an existing --config path")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot be read ({exc}): check the path") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, not {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{p}: {_first_error(exc)}") from None
