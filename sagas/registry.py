"""Which sagas exist: each registers its type, its steps and the queue they run on.

The step runner, the dispatcher, the sweep, the admin and the management command know
sagas only through this registry; a saga's own module is the only place that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagas.models import SagaInstance

Step = Callable[["SagaInstance"], None]


@dataclass(frozen=True)
class SagaType:
    """A saga: its type name, its steps by step name, and where they run.

    ``queue`` is the Celery queue of its steps: steps that wait on the network belong on
    a queue served by a thread pool. ``subject_stream`` maps an instance's correlation
    key to the stream it is about, for links in the admin.
    """

    name: str
    steps: Mapping[str, Step]
    queue: str = "celery"
    max_attempts: int = 8
    subject_stream: Callable[[str], str] | None = field(default=None)


_types: dict[str, SagaType] = {}


def register(saga: SagaType) -> SagaType:
    """Register a saga type (from its app's ``AppConfig.ready()``)."""
    existing = _types.get(saga.name)
    if existing is not None and existing != saga:
        raise ValueError(f"saga type {saga.name!r} is already registered")
    _types[saga.name] = saga
    return saga


def get(name: str) -> SagaType:
    try:
        return _types[name]
    except KeyError:
        known = ", ".join(sorted(_types)) or "none"
        raise LookupError(f"no saga type {name!r} (registered: {known})") from None


def names() -> list[str]:
    return sorted(_types)


def all_types() -> list[SagaType]:
    return [_types[name] for name in sorted(_types)]
