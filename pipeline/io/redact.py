"""Redaction of secrets in URLs: signed hrefs never reach a file or a log.

Signed URLs (Planetary Computer SAS tokens ``?st=...&sig=...``, S3 presigned URLs) carry their
secret in the query string, and user info may carry a password.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_URL_SECRET = re.compile(
    r"(\b[a-z][a-z0-9+.-]*://)([^\s'\"/@]*@)?([^\s'\"?#]*)([?#][^\s'\"]*)?", re.I
)


def redact_url(href: str) -> str:
    """``href`` without the parts where credentials live: query string, fragment, user info.

    Signed URLs (Planetary Computer SAS tokens ``?st=...&sig=...``, S3 presigned URLs) carry
    their secret in the query string. Every href this project writes (``items.json``, the watch
    database, alerts) goes through this function; local paths are returned unchanged.
    """
    parts = urlsplit(href)
    if not parts.scheme or not parts.netloc:
        return href
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with the query string and user info of every URL in it replaced by a marker."""

    def sub(m: re.Match[str]) -> str:
        user = "<redacted>@" if m.group(2) else ""
        query = "?<redacted>" if m.group(4) else ""
        return f"{m.group(1)}{user}{m.group(3)}{query}"

    return _URL_SECRET.sub(sub, text)


class _RedactingFilter(logging.Filter):
    """Rewrites log records so that no URL query string (a signing token) reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def redact_logs() -> None:
    """Redact URLs in every record the root logger's handlers write (idempotent).

    Third-party libraries log full request URLs at debug level (urllib3, pystac-client); the
    filter strips their query strings whatever logger they come from.
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())
