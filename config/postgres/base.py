"""PostgreSQL, with a health check that costs no round trip while the connection is quiet.

With ``CONN_HEALTH_CHECKS``, Django sends ``SELECT 1`` before the first query of every
request that reuses a connection: a round trip (about 0.1 ms of CPU with the server's
share) on a read that costs under 1 ms. A server that ends a session (a restart,
``pg_terminate_backend``, an idle timeout) says so on the socket: it sends an error and
closes it. So the socket is looked at first, without blocking: a connection with nothing
to read is as the last request left it and is used as it is; anything readable (a closed
or terminated session, or a message nobody asked for) gets Django's ``SELECT 1``.

A server that vanishes without a word is found by neither check: the query fails as the
``SELECT 1`` would have, and Django drops the connection at the end of the request.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
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
