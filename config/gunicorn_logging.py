"""gunicorn's own lines (booting, signals, worker timeouts) in the service's log format.

gunicorn gives its error logger handlers of its own, in the master too, which never loads
Django; ``--logger-class config.gunicorn_logging.Logger`` hands that logger to the
configuration of config/logs.py instead. Its access log is left as gunicorn writes it
(a file of its own): the service's request line says more.
"""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from config import logs


class Logger(glogging.Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # the error log file, stdout and stderr captured into it
        logs.configure_from_settings()
        self.error_log.handlers = []
        self.error_log.propagate = True
