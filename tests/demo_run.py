"""One small demo run (Tartus, 2024-12-01 .. 2024-12-20), built once per test process and shared.

The report, products, notebook and browser tests all look at the same outputs: the real
generator, the real stages, in a temporary folder removed when the process exits. Import
:func:`demo_run` from a test module; the first call builds it (about half a minute on 2 cores).
"""

from __future__ import annotations

import atexit
import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import Config, load_config
from pipeline.evaluation.stage import run_site
from pipeline.paths import SitePaths, site_paths

ROOT = Path(__file__).resolve().parents[1]
SITE = "tartus"
START, END = dt.date(2024, 12, 1), dt.date(2024, 12, 20)


@dataclass(frozen=True)
class DemoRun:
    """Where the shared demo run lives."""

    root: Path
    """Temporary folder of the run."""
    config_path: Path
    """Its config YAML (absolute paths), usable with ``basewatch --config``."""
    cfg: Config
    """The loaded config."""
    paths: SitePaths
    """Outputs of the site."""
    metrics: dict
    """What ``run_site`` returned."""


_cache: dict[str, DemoRun] = {}


def demo_run() -> DemoRun:
    """The shared demo run, built on first use."""
    if "run" not in _cache:
        root = Path(tempfile.mkdtemp(prefix="basewatch-demo-run-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        doc = {
            "kind": "basewatch-config",
            "sites": [SITE],
            "catalog": {"url": str(root / "demo" / "catalog.json")},
            "dates": {"start": START.isoformat(), "end": END.isoformat()},
            "demo": {"out": str(root / "demo")},
            "data_dir": str(root / "data"),
            "reports_dir": str(root / "reports"),
            "metrics_dir": str(root / "metrics"),
            "seeds_dir": str(ROOT / "seeds"),
        }
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump(doc))
        cfg = load_config(config_path)
        from pipeline.simulate import build_demo_catalog

        build_demo_catalog(
            cfg.demo.out, seeds_dir=cfg.seeds_dir, sites=[SITE], start=START, end=END
        )
        metrics = run_site(cfg, SITE)
        _cache["run"] = DemoRun(root, config_path, cfg, site_paths(cfg, SITE), metrics)
    return _cache["run"]
