"""The calibration model the detector uses, read from disk.

The model (:class:`pipeline.kernels.detect.calibration.Model`) is fitted by
``benchmarks/calibrate.py``.

The kernel takes the model as an argument; the stages read it here and pass it in.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.kernels.detect.calibration import FEATURES, Model

MODEL_PATH = Path(__file__).parents[1] / "calibration.json"
"""The fitted model shipped with the package (written by ``benchmarks/calibrate.py``)."""

MODEL_ENV = "BASEWATCH_CALIBRATION"
"""Environment variable naming another model file, or ``none`` for the noise-only confidence
(``benchmarks/calibrate.py`` sets it while it runs the detector on its training scenes)."""


@cache
def load_model(path: Path = MODEL_PATH) -> Model | None:
    """The shipped model, or None when no model file exists (confidence stays noise-only).

    Raises
    ------
    ConfigError
        When the file exists but is not a model of the current :data:`FEATURES`.
    """
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if raw.get("kind") != "basewatch-calibration" or tuple(raw.get("features", ())) != FEATURES:
        raise ConfigError(
            f"{path}: not a calibration model of the features {FEATURES}: "
            "refit it with benchmarks/calibrate.py"
        )
    return Model(float(raw["intercept"]), tuple(raw["coef"]), meta=raw.get("meta"))


def active_model() -> Model | None:
    """The model the detector uses: :data:`MODEL_ENV`'s file if set (``none``: no model),
    else the shipped :data:`MODEL_PATH` (see :func:`load_model`)."""
    chosen = os.environ.get(MODEL_ENV, "").strip()
    if chosen.lower() == "none":
        return None
    return load_model(Path(chosen) if chosen else MODEL_PATH)
