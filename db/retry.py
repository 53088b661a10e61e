"""Retry a database transaction when the connection drops (server restart, failover, locked SQLite file).

Every transaction latlab retries is idempotent (``ON CONFLICT DO NOTHING`` inserts, guarded updates),
so running it again after a lost commit acknowledgement is safe. With ``pool_pre_ping`` (set for
every non-SQLite engine) the next attempt gets a fresh connection once the server is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from db.errors import DatabaseError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_RETRY_S = 120.0


_LASTING = ("disk is full", "no space left on device", "readonly database", "read-only file system")
"""Operational errors that waiting does not mend (SQLite's and PostgreSQL's words, lower case)."""


def is_transient(exc: BaseException) -> bool:
    """True for connection loss / server shutdown / lock errors worth retrying; a full disk or a read-only
    database is not (it fails at once, and the same command resumes once it is fixed)."""
    if any(words in str(exc).lower() for words in _LASTING):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OperationalError | InterfaceError):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__
    return False


def with_retry(
    fn: Callable[[], T], *, what: str = "database transaction", retry_s: float = DEFAULT_RETRY_S,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``fn`` (one whole transaction), retrying transient errors with backoff for up to ``retry_s``.

    Non-transient errors propagate at once; the last transient error is raised as
    :class:`DatabaseError` when the deadline passes.
    """
    deadline = time.monotonic() + retry_s
    delay = 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseError(f"{what} failed for {retry_s:.0f}s, giving up: {exc}") from exc
            log.warning("%s: %s; retrying in %.1fs", what, str(exc).splitlines()[0], delay)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
