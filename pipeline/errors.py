"""The error hierarchy of basewatch.

Every error a user can meet is a :class:`BasewatchError` with a one-line message that names the
file, key, Item or asset at fault and says what to do. The CLI turns each class into its own exit
code (see :data:`EXIT_CODES`), so scripts and cron can tell them apart.
"""

from __future__ import annotations


class BasewatchError(Exception):
    """Base of all errors reported to the user."""

    exit_code: int = 1


class ConfigError(BasewatchError):
    """A config file is missing, malformed, or has unknown or invalid keys."""

    exit_code = 2


class SiteError(BasewatchError):
    """A site is unknown, or its AOI or zones are invalid."""

    exit_code = 3


class CatalogError(BasewatchError):
    """A STAC catalog or API cannot be searched, or an Item is unusable."""

    exit_code = 4


class DataError(BasewatchError):
    """Input rasters are missing, corrupt, or hold no usable pixels."""

    exit_code = 5


class AssetAccessError(DataError):
    """An asset server refused a read (HTTP 401/403): a signing token is missing or expired."""


class StageInputError(BasewatchError):
    """A stage's input (the output of an earlier stage) is missing: run that stage first."""

    exit_code = 6


class CoregistrationError(BasewatchError):
    """Dates cannot be co-registered."""

    exit_code = 7


class LockedError(BasewatchError):
    """Another run holds the lock."""

    exit_code = 8


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        BasewatchError,
        ConfigError,
        SiteError,
        CatalogError,
        DataError,
        StageInputError,
        CoregistrationError,
        LockedError,
    )
}
"""Exit code of each error class, as documented in the README."""
