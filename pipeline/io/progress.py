"""Progress bars that stay quiet off a terminal, and structured (JSON) logs.

Progress bars (:func:`progress`, :func:`dask_progress`) are drawn with tqdm on stderr, and only
when stderr is a terminal: under cron, in CI or when stderr is redirected to a file they draw
nothing (tqdm's ``disable=None``). ``--quiet`` turns them off everywhere
(:func:`set_progress_enabled`).

:func:`configure_logging` sets up the root logger once for the CLI: human-readable lines by
default, or one JSON object per line (:class:`JsonFormatter`) with ``--log-json``, so a log
shipper can parse what a cron run did. Extra fields passed with ``logger.info(...,
extra={"site": "tartus"})`` become keys of the JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_state: dict[str, bool] = {"enabled": True}

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
"""Attributes every LogRecord has; any other attribute came from ``extra=`` and is logged."""


def set_progress_enabled(enabled: bool) -> None:
    """Allow (the default) or forbid progress bars for the rest of the process.

    Parameters
    ----------
    enabled
        False turns every bar off, even on a terminal (``--quiet``).
    """
    _state["enabled"] = bool(enabled)


def _disable() -> bool | None:
    # None: tqdm decides, drawing only when its stream (stderr) is a TTY.
    return True if not _state["enabled"] else None


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
) -> Iterator[T]:
    """Iterate over ``iterable`` with a progress bar on stderr when stderr is a terminal.

    Parameters
    ----------
    iterable
        What to iterate over.
    desc
        Short label of the step (``"tartus: triptychs"``).
    total
        Number of elements, when ``iterable`` has no ``len``.
    unit
        Unit shown in the bar (``"date"``, ``"page"``, ``"chunk"``).

    Yields
    ------
    object
        The elements of ``iterable``, unchanged.
    """
    bar = tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=_disable(),
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        yield from bar
    finally:
        bar.close()


@contextmanager
def dask_progress(desc: str) -> Iterator[None]:
    """Show the tasks of every dask computation inside the block as a progress bar.

    Parameters
    ----------
    desc
        Label of the step (``"tartus: change score"``).

    Notes
    -----
    Works with dask's local schedulers (threads, processes, synchronous); computations sent to
    a ``distributed`` cluster report on its dashboard instead.
    """
    from dask.callbacks import Callback

    bar = tqdm(desc=desc, unit="task", disable=_disable(), leave=False, file=sys.stderr, total=0)

    class _Bar(Callback):  # type: ignore[misc]
        def _start_state(self, dsk: Any, state: Any) -> None:
            bar.total = (bar.total or 0) + sum(len(state[k]) for k in ("ready", "waiting"))
            bar.refresh()

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            bar.update(1)

    try:
        with _Bar():
            yield
    finally:
        bar.close()


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: ``time`` (UTC ISO 8601), ``level``, ``logger``, ``message``.

    Fields given with ``extra=`` are added as keys; an exception adds ``exc_type`` and
    ``exc_info`` (the formatted traceback). Values JSON cannot hold are written as strings.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        doc: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(
    level: int = logging.WARNING, *, json_logs: bool = False, stream: IO[str] | None = None
) -> logging.Handler:
    """Send log records of ``level`` and above to ``stream`` (stderr), as text or JSON lines.

    Replaces the handlers of the root logger, so calling it again switches format cleanly; the
    filters installed on the old handlers (e.g. :func:`pipeline.io.redact.redact_logs`) are kept.

    Parameters
    ----------
    level
        Lowest level logged (``logging.INFO`` for ``--verbose``, ``logging.ERROR`` for
        ``--quiet``).
    json_logs
        One JSON object per line (:class:`JsonFormatter`) instead of ``LEVEL logger: message``.
    stream
        Where to write; stderr by default.

    Returns
    -------
    logging.Handler
        The installed handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        for flt in old.filters:  # keep filters others installed (URL redaction)
            if flt not in handler.filters:
                handler.addFilter(flt)
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
