"""Where each stage of a site reads and writes: ``data/<site>/``, ``reports/<site>/``, metrics.

The folders come from the run's :class:`pipeline.config.Config`; every stage, the watch mode and
the notebooks find a site's files here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipeline.config import Config


class SitePaths(BaseModel):
    """Where each stage of one site reads and writes (relative to the project root)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    site: str
    data: Path
    reports: Path
    metrics_dir: Path

    @property
    def items(self) -> Path:
        """Search output: the Items of the site, sorted (a STAC ItemCollection)."""
        return self.data / "items.json"

    @property
    def cube(self) -> Path:
        """Load output: the cube on the site grid (zarr)."""
        return self.data / "cube.zarr"

    @property
    def load_report(self) -> Path:
        """Load output: dates kept and dropped, with why."""
        return self.data / "load.json"

    @property
    def aligned(self) -> Path:
        """Co-register output: the cube with every kept date aligned to the reference (zarr)."""
        return self.data / "aligned.zarr"

    @property
    def coreg(self) -> Path:
        """Co-register output: shift, quality and status per date."""
        return self.data / "coreg.json"

    @property
    def detections(self) -> Path:
        """Detect output: one GeoJSON Feature per detected object, lon/lat."""
        return self.data / "detections.geojson"

    @property
    def change(self) -> Path:
        """Detect output: change score and labels per date pair (zarr)."""
        return self.data / "change.zarr"

    @property
    def tile_detections(self) -> Path:
        """Tile output: one GeoJSON Feature per object the out-of-core detector finds, lon/lat."""
        return self.data / "tile_detections.geojson"

    @property
    def tile_summary(self) -> Path:
        """Tile output: method, dates, counts and seconds per step of the tile run (JSON)."""
        return self.data / "tile.json"

    @property
    def report_html(self) -> Path:
        """Report output: the site's HTML report."""
        return self.reports / "index.html"

    @property
    def metrics(self) -> Path:
        """Evaluate output: the site's metrics."""
        return self.metrics_dir / f"{self.site}.json"

    @property
    def occupancy(self) -> Path:
        """Detect output: share of each zone occupied at each date (CSV, a DVC plot)."""
        return self.metrics_dir / f"{self.site}_occupancy.csv"


def site_paths(cfg: Config, site: str, root: str | Path = ".") -> SitePaths:
    """Paths of every stage output of ``site`` under ``root``."""
    r = Path(root)
    return SitePaths(
        site=site,
        data=r / cfg.data_dir / site,
        reports=r / cfg.reports_dir / site,
        metrics_dir=r / cfg.metrics_dir,
    )
