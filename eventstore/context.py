"""Who and what caused the events being appended: the metadata context.

Entry points (a request, a saga step, a management command) open a context once;
every append inside it stamps ``correlation_id``, ``causation_id`` and ``actor``
on each event's metadata, so callers never thread these through every function.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class MessageContext:
    """The causal context of the work in progress."""

    correlation_id: uuid.UUID
    causation_id: uuid.UUID
    actor: str
    command_id: uuid.UUID | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "correlation_id": str(self.correlation_id),
            "causation_id": str(self.causation_id),
            "actor": self.actor,
        }
        if self.command_id is not None:
            metadata["command_id"] = str(self.command_id)
        metadata.update(self.extra)
        return metadata


_current: contextvars.ContextVar[MessageContext | None] = contextvars.ContextVar(
    "eventstore_message_context", default=None
)


def current_context() -> MessageContext:
    """The open context, or a fresh root context for code that opened none."""
    context = _current.get()
    if context is None:
        root = uuid.uuid4()
        context = MessageContext(correlation_id=root, causation_id=root, actor="system")
    return context


@contextlib.contextmanager
def message_context(
    *,
    actor: str | None = None,
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    command_id: uuid.UUID | None = None,
    **extra: Any,
) -> Iterator[MessageContext]:
    """Open a context; unspecified fields are inherited from the enclosing one.

    A new root (no enclosing context, no ids given) correlates to itself.
    """
    outer = _current.get()
    if outer is None:
        root = correlation_id or causation_id or command_id or uuid.uuid4()
        outer = MessageContext(correlation_id=root, causation_id=root, actor="system")
    context = replace(
        outer,
        actor=actor or outer.actor,
        correlation_id=correlation_id or outer.correlation_id,
        causation_id=causation_id or command_id or outer.causation_id,
        command_id=command_id or outer.command_id,
        extra={**outer.extra, **extra},
    )
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
