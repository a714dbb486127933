"""Running saga steps: one at a time per instance, retried with backoff, never twice.

A runner holds the instance's advisory lock (session-level) while it runs a step, so two
workers cannot run the same step at once. The lock takes no transaction id: a step that
waits on a mail server before it writes anything holds back no subscriber's horizon
(the feed only reads below the oldest running transaction id). What the step wrote and
the instance's new state commit in one transaction, and the new state is written only
if nobody (the saga's subscriber, an operator) changed the instance's status or step
meanwhile; otherwise everything the step wrote is rolled back and the runner moves on.

A step that raises is recorded (attempts, last error, next attempt) and retried later;
after ``MAX_ATTEMPTS`` the instance is marked failed. Due steps are run in bulk by one
queued task at a time (:func:`wake_runner`), not one task per instance; steps whose
every effect is in this database can share one transaction (``run_due(batched=...)``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import Min, QuerySet
from django.utils import timezone

from eventstore import wakeups
from sagas.models import SagaInstance

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_BACKOFF_SECONDS = 300
Step = Callable[[SagaInstance], None]

# Fields a step may change. ``handled_events`` is the subscriber's alone, so a step
# finishing while the subscriber records an event does not undo that record.
STEP_FIELDS = ["status", "step", "attempts", "next_attempt_at", "last_error",
               "issued_commands", "data", "updated_at", "finished_at"]  # fmt: skip
RUNNER_NOW_KEY = "sagas:runner:now"
# Delayed runs are grouped into slots, so a burst of instances due at nearly the same
# time queues one delayed task per slot rather than one per instance.
RUNNER_SLOT_SECONDS = 0.1


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


def wake_runner(at: datetime | None = None) -> None:
    """Queue a run of the due steps now (or at ``at``), unless one is queued. Never raises."""
    from sagas.tasks import run_due_saga_steps

    delay = 0.0 if at is None else (at - timezone.now()).total_seconds()
    if delay <= 0:
        wakeups.send_once(RUNNER_NOW_KEY, run_due_saga_steps, what="the saga step runner")
        return
    slot = math.ceil((time.time() + delay) / RUNNER_SLOT_SECONDS)
    countdown = max(0.0, slot * RUNNER_SLOT_SECONDS - time.time())
    wakeups.send_once(
        f"sagas:runner:at:{slot}",
        run_due_saga_steps,
        countdown=countdown,
        what="the saga step runner",
    )


def schedule(instance: SagaInstance) -> None:
    """Have the instance's next step run when it is due, once this transaction commits."""
    due = instance.next_attempt_at
    transaction.on_commit(lambda: wake_runner(due))


@contextlib.contextmanager
def _named_lock(key: str) -> Iterator[bool]:
    """A session advisory lock on ``key`` if free (no transaction id), released after."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key])
        locked = cursor.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            _unlock("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key], key)


def _instance_lock(instance_id: int) -> contextlib.AbstractContextManager[bool]:
    return _named_lock(f"saga-instance:{instance_id}")


def _unlock(sql: str, params: list[Any], what: str) -> None:
    """Release session advisory locks; if that fails, close the session, which does.

    A worker keeps its connection across tasks: a lock left on it would make every other
    runner find the instance busy for as long as the connection lives.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    except Exception as exc:
        logger.warning("could not release the lock of %s (%s); closing the connection", what, exc)
        connection.close()


def _session() -> object:
    """The database session the locks taken now belong to (Django reconnects silently)."""
    connection.ensure_connection()
    return connection.connection


class _ChangedMeanwhile(Exception):
    pass


def _save_step(
    instance: SagaInstance, status: str, step: str, before: dict[str, Any] | None = None
) -> None:
    """Write what the step changed if the instance is still at (status, step).

    With ``before`` (the fields' values before the step), only the fields that differ.
    """
    fields = [f for f in STEP_FIELDS if before is None or getattr(instance, f) != before[f]]
    changed = SagaInstance.objects.filter(pk=instance.pk, status=status, step=step).update(
        **{field: getattr(instance, field) for field in fields}
    )
    if not changed:
        raise _ChangedMeanwhile


def run_step(instance_id: int, steps: dict[str, Step], *, follow: bool = False) -> str:
    """Run the due step of one instance; returns what happened, for logs and tests.

    On success that is the instance's new step. With ``follow``, the steps that become
    due at once run too, under the same lock (the runner's way: one lock and one read
    per instance instead of one per step); without it the next step is scheduled.
    """
    with _instance_lock(instance_id) as locked:
        if not locked:
            return "busy"
        instance = SagaInstance.objects.filter(pk=instance_id).first()
        if instance is None:
            return "missing"
        while True:
            outcome = _run_one(instance, steps)
            if not follow or outcome not in steps:
                break
    if not follow and outcome in steps:  # succeeded, and another step is to come
        schedule(instance)
    return outcome


def _run_one(instance: SagaInstance, steps: dict[str, Step]) -> str:
    if not instance.is_open:
        return f"already {instance.status}"
    if instance.next_attempt_at and instance.next_attempt_at > timezone.now():
        return "not due"
    step = steps.get(instance.step)
    if step is None:
        return f"waiting for an event ({instance.step})"
    seen = (instance.status, instance.step)
    before = {field: copy.deepcopy(getattr(instance, field)) for field in STEP_FIELDS}
    try:
        with transaction.atomic():
            step(instance)
            instance.updated_at = timezone.now()
            _save_step(instance, *seen, before)
    except _ChangedMeanwhile:
        return "changed meanwhile"
    except Exception as exc:
        return _record_failure(instance.pk, seen, exc)
    return instance.step


def _record_failure(instance_id: int, seen: tuple[str, str], exc: Exception) -> str:
    """Count a failed attempt and plan the next (or give up); still under the lock."""
    instance = SagaInstance.objects.get(pk=instance_id)  # forget what the step changed
    if (instance.status, instance.step) != seen:
        return "changed meanwhile"
    instance.attempts += 1
    instance.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    instance.updated_at = timezone.now()
    if instance.attempts >= MAX_ATTEMPTS:
        instance.status = SagaInstance.Status.FAILED
        instance.next_attempt_at = None
        instance.finished_at = timezone.now()
        logger.error("saga %s failed for good at %s: %s", instance.pk, instance.step, exc)
    else:
        instance.next_attempt_at = timezone.now() + backoff(instance.attempts)
        logger.warning(
            "saga %s step %s failed (attempt %s), retry at %s: %s",
            instance.pk, instance.step, instance.attempts, instance.next_attempt_at, exc,
        )  # fmt: skip
    with transaction.atomic():
        try:
            _save_step(instance, *seen)
        except _ChangedMeanwhile:
            return "changed meanwhile"
        if instance.is_open:
            schedule(instance)
    return "failed attempt"


def _due(step_names: Iterable[str]) -> QuerySet[SagaInstance]:
    """Open instances at one of these steps, due now, the longest waiting first."""
    return SagaInstance.objects.filter(
        status__in=_OPEN, step__in=list(step_names), next_attempt_at__lte=timezone.now()
    ).order_by("next_attempt_at")


def due_instances(steps: dict[str, Step], limit: int = 500) -> list[int]:
    """Open instances whose step is due, the longest waiting first."""
    return list(_due(steps).values_list("pk", flat=True)[:limit])


def next_due_at(steps: dict[str, Step]) -> datetime | None:
    """When the next open instance's step falls due (None: none is waiting)."""
    return SagaInstance.objects.filter(
        status__in=_OPEN, step__in=list(steps), next_attempt_at__gt=timezone.now()
    ).aggregate(at=Min("next_attempt_at"))["at"]


# A runner hands its worker process back this often, so that subscriber wake-ups queued
# meanwhile run between its turns instead of waiting for a long backlog of steps.
RUNNER_TIME_BUDGET_SECONDS = 0.5


def runner_lock() -> contextlib.AbstractContextManager[bool]:
    """One runner at a time: two would only contend for the same instances' locks."""
    return _named_lock("saga-runner")


# Steps whose every effect is in this database run many instances to a transaction: one
# commit (one WAL flush) for the lot instead of one each. A transaction stops taking
# instances after this long: it holds a transaction id, and the subscribers' horizon
# waits for it.
BATCH_TRANSACTION_SECONDS = 0.02
# ... and after this many: each welcome writes inside three nested savepoints, and past 64
# subtransactions PostgreSQL stops caching them, which slows visibility checks in every
# session of the server while the transaction is open.
BATCH_MAX_INSTANCES = 16


@contextlib.contextmanager
def _instance_locks(ids: list[int]) -> Iterator[tuple[list[int], object]]:
    """The advisory locks (as :func:`_instance_lock`) of those not busy elsewhere, at once,
    and the session holding them: if that session is lost (and Django reconnects), so
    are the locks, and the caller must not run another step under them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM unnest(%s::bigint[]) AS id "
            "WHERE pg_try_advisory_lock(hashtextextended('saga-instance:' || id, 0))",
            [ids],
        )
        locked = [row[0] for row in cursor.fetchall()]
    session = _session()
    try:
        yield locked, session
    finally:
        if locked and connection.connection is session:
            _unlock(
                "SELECT pg_advisory_unlock(hashtextextended('saga-instance:' || id, 0)) "
                "FROM unnest(%s::bigint[]) AS id",
                [locked],
                f"{len(locked)} sagas",
            )


_SAVE_STEPS_SQL = """
UPDATE sagas_instance AS s
   SET status = v.status, step = v.step, attempts = v.attempts,
       next_attempt_at = v.next_attempt_at, last_error = v.last_error,
       issued_commands = v.issued_commands::jsonb, data = v.data::jsonb,
       updated_at = v.updated_at, finished_at = v.finished_at
  FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[],
              %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
              %s::timestamptz[])
       AS v(id, seen_status, seen_step, status, step, attempts, next_attempt_at,
            last_error, issued_commands, data, updated_at, finished_at)
 WHERE s.id = v.id AND s.status = v.seen_status AND s.step = v.seen_step
"""


def _save_steps(done: list[tuple[SagaInstance, tuple[str, str]]]) -> None:
    """:func:`_save_step` for many instances in one statement; all or none."""
    columns = (
        [i.pk for i, _ in done],
        [seen[0] for _, seen in done],
        [seen[1] for _, seen in done],
        [i.status for i, _ in done],
        [i.step for i, _ in done],
        [i.attempts for i, _ in done],
        [i.next_attempt_at for i, _ in done],
        [i.last_error for i, _ in done],
        [json.dumps(i.issued_commands) for i, _ in done],
        [json.dumps(i.data) for i, _ in done],
        [i.updated_at for i, _ in done],
        [i.finished_at for i, _ in done],
    )
    with connection.cursor() as cursor:
        # Row locks in primary-key order, as the saga's subscriber takes them: in the
        # UPDATE's own order the two could deadlock.
        cursor.execute(
            "SELECT id FROM sagas_instance WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [columns[0]],
        )
        cursor.execute(_SAVE_STEPS_SQL, columns)
        if cursor.rowcount != len(done):
            raise _ChangedMeanwhile


def _run_batched(
    ids: list[int], steps: dict[str, Step], batched: set[str], session: object
) -> None:
    """Run the due batched steps of these (locked) instances, many to a transaction.

    A step that raises is undone alone (a savepoint) and recorded as a failed attempt.
    If any instance changed meanwhile, or the database refuses the batch (a deadlock,
    say), the whole transaction rolls back and the caller runs what is left one by one,
    where :func:`_run_one` sorts it out.
    """
    pending = list(_due(batched).filter(pk__in=ids))
    while pending and connection.connection is session:
        deadline = time.monotonic() + BATCH_TRANSACTION_SECONDS
        done: list[tuple[SagaInstance, tuple[str, str]]] = []
        failed: list[tuple[SagaInstance, tuple[str, str], Exception]] = []
        try:
            # Each welcome's append wakes the same subscribers after the commit: once will do.
            with wakeups.coalesced(), transaction.atomic():
                for instance in pending[:BATCH_MAX_INSTANCES]:
                    seen = (instance.status, instance.step)
                    try:
                        with transaction.atomic():
                            steps[instance.step](instance)
                    except Exception as exc:
                        failed.append((instance, seen, exc))
                    else:
                        instance.updated_at = timezone.now()
                        done.append((instance, seen))
                    if time.monotonic() > deadline:
                        break
                if done:
                    _save_steps(done)
        except _ChangedMeanwhile:
            return
        except DatabaseError as exc:
            logger.warning("a batch of saga steps was refused (%s); running them one by one", exc)
            return
        for instance, seen, exc in failed:
            _record_failure(instance.pk, seen, exc)
        pending = pending[len(done) + len(failed) :]


def run_opened(
    saga_type: str, keys: list[str], steps: dict[str, Step], batched: set[str] | frozenset[str]
) -> int:
    """Run the due batched steps of these instances now, in this process, as the runner
    would (same locks, same transactions): for a subscriber that has just committed the
    instances, so they need not wait for a runner task. Returns the instances run; what
    is left (busy elsewhere, changed meanwhile, failed) stays the runner's."""
    ids = list(
        _due(batched)
        .filter(saga_type=saga_type, correlation_key__in=keys)
        .values_list("pk", flat=True)
    )
    if not ids:
        return 0
    with _instance_locks(ids) as (locked, session):
        _run_batched(locked, steps, set(batched), session)
    if locked:
        wake_runner()  # for their next steps (the emails), and anything left over
    return len(locked)


def run_due(
    steps: dict[str, Step],
    *,
    batched: set[str] | frozenset[str] = frozenset(),
    time_budget: float = RUNNER_TIME_BUDGET_SECONDS,
    page: int = 25,
) -> int:
    """Run every due step (each instance's next ones too, once due); returns instances run.

    Out of time with work left, it queues another run. See :func:`run_turn`.
    """
    ran, out_of_time = run_turn(steps, batched=batched, time_budget=time_budget, page=page)
    if out_of_time:
        queue_next_turn()
    return ran


def queue_next_turn() -> None:
    """Queue a run now, even though the mark of a queued one may still be set: a turn that
    ran out of time never cleared it (its own wake-up, meant to stay the only one)."""
    wakeups.clear(RUNNER_NOW_KEY)
    wake_runner()


def run_turn(
    steps: dict[str, Step],
    *,
    batched: set[str] | frozenset[str] = frozenset(),
    time_budget: float = RUNNER_TIME_BUDGET_SECONDS,
    page: int = 25,
) -> tuple[int, bool]:
    """One runner's turn: (instances run, whether it stopped for time with work left).

    ``batched`` names steps whose every effect is in this database: those run many
    instances to a transaction (:func:`_run_batched`) before the rest run one by one.
    An instance is taken up once per turn, so one that stays due (busy elsewhere) cannot
    keep a turn spinning; the turn leaves a look ``RUNNER_TIME_BUDGET_SECONDS`` later
    for it (so one run every half second while, say, a send hangs with its lock). The
    mark of the queued run (``RUNNER_NOW_KEY``) stays set while the turn finds work, so
    the wake-ups of new steps queue no more tasks; before the turn ends for lack of work
    it clears the mark and looks once more, so a step that falls due after that look
    queues a new run.
    """
    deadline = time.monotonic() + time_budget
    tried: set[int] = set()
    busy: set[int] = set()
    ran = 0
    cleared = False
    while True:
        ids = [pk for pk in due_instances(steps, limit=page + len(tried)) if pk not in tried]
        if not ids:
            if not cleared:
                wakeups.clear(RUNNER_NOW_KEY)
                cleared = True
                continue
            # Whoever made the later ones (a subscriber batch, a failed attempt) woke the
            # runner for its earliest only: the runner itself keeps the chain going.
            upcoming = next_due_at(steps)
            if busy:  # locked elsewhere (a subscriber's process, a slow send): look again
                soon = timezone.now() + timedelta(seconds=RUNNER_TIME_BUDGET_SECONDS)
                upcoming = soon if upcoming is None else min(upcoming, soon)
            if upcoming is not None:
                wake_runner(upcoming)
            return ran, False
        if cleared:  # more work after all: mark the run again, until the next look
            wakeups.mark(RUNNER_NOW_KEY)
            cleared = False
        ids = ids[:page]
        tried.update(ids)
        with _instance_locks(ids) as (locked, session):
            ran += len(locked)
            busy.update(set(ids) - set(locked))
            if batched:
                _run_batched(locked, steps, set(batched), session)
            for instance in SagaInstance.objects.filter(pk__in=locked).order_by("next_attempt_at"):
                if connection.connection is not session:
                    logger.warning("the session holding a page of saga locks was lost; leaving it")
                    break
                while _run_one(instance, steps) in steps:
                    if connection.connection is not session:
                        break
                if time.monotonic() > deadline:
                    break
        if time.monotonic() > deadline:
            return ran, True


def mark_cancelled(instance: SagaInstance, reason: str) -> None:
    """Change the instance to cancelled in memory (the caller saves it)."""
    instance.status = SagaInstance.Status.CANCELLED
    instance.last_error = reason
    instance.next_attempt_at = None
    instance.finished_at = instance.updated_at = timezone.now()


def retry(instance: SagaInstance) -> None:
    """Operator action: run a failed (or stuck) instance's step again now."""
    if instance.status not in (SagaInstance.Status.FAILED, *_OPEN):
        raise ValueError(f"saga {instance.pk} is {instance.status}; only failed or open ones retry")
    instance.status = (
        SagaInstance.Status.STARTED
        if instance.status == SagaInstance.Status.FAILED
        else instance.status
    )
    instance.attempts = 0
    instance.next_attempt_at = timezone.now()
    instance.finished_at = None
    instance.updated_at = timezone.now()
    instance.save()
    schedule(instance)


def cancel(instance: SagaInstance, reason: str = "cancelled by an operator") -> None:
    if not instance.is_open and instance.status != SagaInstance.Status.FAILED:
        raise ValueError(f"saga {instance.pk} is {instance.status} and cannot be cancelled")
    mark_cancelled(instance, reason)
    instance.save()


_OPEN = (SagaInstance.Status.STARTED, SagaInstance.Status.WAITING)
