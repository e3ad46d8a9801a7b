"""The notebooks: committed without outputs, parameterised, and executed headless on a demo run.

Executed with nbclient, as ``jupyter nbconvert --execute`` does (working directory = the
notebook's folder), inside a project folder whose ``configs/params.yaml`` points at the shared
demo run (what a fresh clone has after ``make demo``), with parameters appended to the
``parameters`` cell in memory (what papermill does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from demo_run import ROOT, demo_run

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["01_explore_site.ipynb", "02_detections.ipynb"]


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


def test_committed_notebooks_are_stripped_and_parameterised() -> None:
    assert [p.name for p in NOTEBOOKS] == NAMES
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: outputs committed"
                assert cell.execution_count is None, f"{path.name}: execution count committed"
        params = _parameters_cell(nb)
        assert 'config = "configs/params.yaml"' in params.source
        assert "site = None" in params.source
        assert nb.metadata["kernelspec"]["name"] == "python3"
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "from pipeline" in source and "def " in source  # calls the library ...
        assert source.count("def ") == 1  # ... defining only find_root, no copied code


def _project(tmp_path: Path) -> Path:
    """A project folder as a fresh clone has it after ``make demo``: its default config
    (``configs/params.yaml``) points at the demo run; the library is this checkout's."""
    run = demo_run()
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'clone'\n")
    shutil.copy(run.config_path, project / "configs" / "params.yaml")
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    (project / "pipeline").symlink_to(ROOT / "pipeline", target_is_directory=True)
    return project


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params", "expect"),
    [
        # an absolute config injected, as papermill -p would
        ("01_explore_site.ipynb", 'config = "{config}"\nsite = "tartus"\npair = 0\n'
         'date = "{first}"\nthreshold = 20.0', "showing {first}"),
        # the default config of the project folder, found from the notebook's own folder
        ("02_detections.ipynb", 'kind = "removed"\nmax_triptychs = 2', "triptychs shown"),
    ],
)  # fmt: skip
def test_notebook_runs_with_injected_parameters(
    name: str, params: str, expect: str, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    run = demo_run()
    project = _project(tmp_path)
    first = min(json.loads(run.paths.load_report.read_text())["dates_kept"])
    nb = nbformat.read(project / "notebooks" / name, as_version=4)
    cell = _parameters_cell(nb)
    cell.source += "\n" + params.format(config=run.config_path, first=first)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},  # nbconvert's cwd
    )
    client.execute()
    text = _text(nb)
    assert f"project {project}" in text  # root found by walking up from notebooks/
    assert "site    tartus" in text and str(run.root) in text
    assert expect.format(first=first) in text
    assert _images(nb) >= 3
    if name.startswith("02"):
        removed = [
            f
            for f in json.loads(run.paths.detections.read_text())["features"]
            if f["properties"]["kind"] == "removed"
        ]
        assert f"{min(2, len(removed))} triptychs shown" in text
        assert f"{len(removed)} of " in text
