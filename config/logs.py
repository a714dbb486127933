"""One logging configuration for the web, the Celery worker and beat, and manage.py.

structlog renders every line, our own and those of Django, Celery, gunicorn and the
libraries (their stdlib records go through the same processors via
``ProcessorFormatter``), and its contextvars carry the request and correlation ids to
every line written while a request, a subscriber batch or a saga step is handled.

``json``: one JSON object per line (timestamp, level, logger, message, and the bound ids).
``console``: one readable line per record, for a person at a terminal.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

FORMATS = ("json", "console")

# Chatty at INFO while the service is idle: Celery logs every task it receives and
# finishes, beat every task it sends (the safety net's, every few seconds). Their
# failures are still logged (WARNING and above), our own lines say what work was done,
# and LOG_LEVEL=DEBUG shows theirs again.
QUIET_AT_INFO = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def _drop_unknown(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Fields bound as None (not known here) are left out rather than written as null."""
    return {key: value for key, value in event.items() if value is not None}


def _shared_processors() -> list[Any]:
    """What every record goes through, structlog's and stdlib's alike."""
    return [
        structlog.contextvars.merge_contextvars,
        _drop_unknown,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _renderer(fmt: str) -> list[Any]:
    if fmt == "json":
        return [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    return [
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of every handler: renders stdlib and structlog records alike."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(fmt)],
    )


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """Django's ``LOGGING`` for ``fmt`` (one of :data:`FORMATS`); also configures structlog,
    whose loggers hand their events to these handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    debug = logging.getLevelNamesMapping().get(level.upper(), logging.INFO) < logging.INFO
    quiet = level if debug else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structlog": {"()": formatter, "fmt": fmt}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structlog"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's own console handler would print request lines a second time; the
            # request line (config.request_context) says what django.request would for 4xx.
            "django": {"handlers": [], "propagate": True, "level": "INFO"},
            "django.request": {"level": "ERROR"},
            # django-axes says INFO about every login; failures and lockouts are WARNING.
            "axes": {"level": "WARNING"},
            **{name: {"level": quiet} for name in QUIET_AT_INFO},
        },
    }


def configure_from_settings(logfile: str | None = None) -> None:
    """Apply ``settings.LOGGING`` in a Celery process, which would otherwise install its own
    handlers and log what is printed on stdout as WARNING records.

    With ``logfile`` (``--logfile``, as scripts/up.sh starts its detached workers, whose
    stdout and stderr are /dev/null), the log lines and what is printed (the console email
    backend's messages, as plain text) both go to that file.
    """
    import logging.config
    import os

    from django.conf import settings

    if logfile:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.config.dictConfig(settings.LOGGING)
