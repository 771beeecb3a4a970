"""Logging to stderr, with secrets kept out of every line.

Secrets reach margo-lite from files (tokens, client secrets) and, by mistake, inside URLs.
Whatever reads a secret registers it here; a filter on the handler then masks it in every
record, whatever module logged it. `sanitize_url` strips credentials and query strings so
a URL can be shown in a log line, an error or a status report.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import urllib.parse

LOGGER_NAME = "margo_lite"
MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words; refuse them as secrets instead

_MAX_SECRETS = 256  # rotated tokens come and go: keep the newest, bound the work per line

_lock = threading.Lock()
_secrets: dict[str, None] = {}  # insertion-ordered set


def _unlock_in_child() -> None:
    """A forked child (git/forked.py) logs: a lock another thread held at the fork is free."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_unlock_in_child)


def register_secret(value: str | None) -> None:
    """Mask `value` in every log line and in `redact()` from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.pop(value, None)
            _secrets[value] = None
            while len(_secrets) > _MAX_SECRETS:
                del _secrets[next(iter(_secrets))]


def redact(text: str) -> str:
    """Replace every registered secret in `text` by a mask."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def sanitize_url(url: str) -> str:
    """The URL without user, password, query or fragment: safe to log."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Formats the record once, masks secrets, and stores the result as the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            # Tracebacks (only ever for bugs) are masked like the message itself.
            message = f"{message}\n{_FORMATTER.formatException(record.exc_info)}"
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = None
        return True


def setup(level: str | int = "INFO", stream=None) -> logging.Logger:
    """Send margo-lite's log to stderr (journald picks it up under systemd)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    # journald stamps every line itself; elsewhere (a terminal, a file) we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler.setFormatter(logging.Formatter(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False
    return logger


def get(name: str) -> logging.Logger:
    """A child of margo-lite's logger: `get(__name__)` in every module."""
    if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
