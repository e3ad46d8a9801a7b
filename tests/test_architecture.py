"""Rules of docs/architecture.md that import-linter cannot check, read from the source (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline.kernels

KERNELS = Path(pipeline.kernels.__file__).parent

EAGER = frozenset({"compute", "persist"})
"""Calls that run a dask graph: kernels return lazy results and leave them to the stages."""


def eager_calls(source: str) -> list[str]:
    """``line: call`` of each ``dask.compute``-like call (``x.compute()``, ``dask.persist``, a
    ``compute`` imported from dask) in Python source."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dask"
        for alias in node.names
        if alias.name in EAGER
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in EAGER:
            found.append(f"{node.lineno}: {ast.unparse(func)}")
        elif isinstance(func, ast.Name) and func.id in imported:
            found.append(f"{node.lineno}: {func.id}")
    return found


def test_eager_calls_are_found() -> None:
    source = (
        "import dask\n"
        "from dask import compute as run\n"
        "a, b = dask.compute(x, y)\n"
        "c = x.sum().compute()\n"
        "d = run(x)\n"
        "e = x.persist()\n"
        "f = np.linalg.svd(x, compute_uv=False)\n"
    )
    assert eager_calls(source) == [
        "3: dask.compute",
        "4: x.sum().compute",
        "5: run",
        "6: x.persist",
    ]


def test_kernels_never_compute() -> None:
    modules = sorted(KERNELS.rglob("*.py"))
    assert len(modules) > 20  # the scan sees the kernels
    found = {
        str(path.relative_to(KERNELS)): calls
        for path in modules
        if (calls := eager_calls(path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"kernels compute dask graphs (leave that to pipeline/stages): {found}"
