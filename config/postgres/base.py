"""PostgreSQL, with a health check that costs no round trip while the connection is quiet.

With ``CONN_HEALTH_CHECKS``, Django sends ``SELECT 1`` before the first query of every
request that reuses a connection: a round trip on a read that costs little more. A
server that ends a session (a restart, ``pg_terminate_backend``, an idle timeout) says
so on the socket: it sends an error and closes it. So the socket is looked at first,
without blocking: a connection with nothing to read is as the last request left it and
is used as it is; anything readable (a closed or terminated session, or a message nobody
asked for) gets Django's ``SELECT 1``.

A server that vanishes without a word is found by neither check: the query fails as the
``SELECT 1`` would have, and Django drops the connection at the end of the request.

It also hands out cursors whose statements PostgreSQL prepares
(:meth:`prepared_cursor`): Django's own cursors bind parameters on the client and send
every statement as text to be parsed and planned anew (docs/framework-bends.md has what
preparing saves). Prepared statements live in the session, so they need
``prepare_threshold`` set (Django passes ``None``, which makes psycopg ignore
``prepare=True`` too) and a session of one's own: no pooler in transaction mode
(``DATABASE_PREPARED_STATEMENTS=false`` turns them off).
"""

from __future__ import annotations

import select
from typing import Any

from django.db.backends.postgresql import base, operations
from django.db.backends.utils import CursorWrapper
from psycopg import errors


class _PreparingCursor(base.ServerBindingCursor):
    """Binds on the server, prepares every statement it runs (once per session) and
    reads results in binary.

    Binary results are read by psycopg's C loaders. In text, Django's own loader for
    ``timestamptz`` (Python, so that values carry Django's time zone) parses each
    timestamp. The binary loader gives the session's time zone, which Django sets to its
    own (UTC).
    """

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("prepare", True)
        kwargs.setdefault("binary", True)
        return super().execute(query, params, **kwargs)


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: str, params: Any) -> str | None:
        # Django reads a client-binding cursor's interpolated text; a server-binding one
        # holds only ``$1`` placeholders, so compose the statement as Django would.
        if isinstance(cursor, _PreparingCursor):
            try:
                return self.compose_sql(sql, params)
            except errors.DataError:
                return None
        return super().last_executed_query(cursor, sql, params)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def prepared_cursor(self) -> CursorWrapper:
        """A cursor (query log and error wrapping included) whose statements are prepared.

        Without ``prepare_threshold`` (``DATABASE_PREPARED_STATEMENTS=false``) it binds on
        the server but prepares nothing. The batch statements (``store.append``, the users
        projection) use bare psycopg cursors on the same connection instead: they are
        prepared the same way, but stay out of Django's query log, where a rebuild's
        thousand-row upserts would be composed into text and kept under DEBUG.
        """
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            # No time zone loader to register, as Django's create_cursor may: that one
            # reads text, and this cursor reads binary.
            return self._prepare_cursor(_PreparingCursor(self.connection))

    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and self._quiet()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _quiet(self) -> bool:
        """True when the session is open and the server has sent nothing since."""
        if self.connection.closed:
            return False
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
