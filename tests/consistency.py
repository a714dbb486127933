"""One consistency check for fault, soak and load runs: events, read model, sagas and emails.

After a run has gone quiet, these must agree exactly:

- the event store is whole: each stream's versions are 0..N without a gap and the
  stream row says N;
- every user stream, replayed through the ``User`` aggregate, equals its ``UserRecord``
  row (fields, status, welcome, version, last position), and no row lacks a stream;
- every user has at most one ``UserWelcomed``, and exactly one unless the user was
  deleted before being welcomed;
- one welcome saga per user: ``completed`` for the welcomed, ``cancelled`` for those
  deleted first, either for those deleted between the welcome and the email; none
  still open or failed;
- one welcome email per completed saga (none when its address had one within the
  cooldown), none for the others (emails are identified by their ``X-Saga-Instance``
  header);
- optionally, every write a client was told succeeded (stream, version, position) is
  stored where the response said.

``lost`` counts what should exist and does not; ``duplicated`` what exists more than
once (or without a cause). Run it from a test (``check()``, ``wait_until_consistent()``)
or against a running service::

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m tests.consistency \\
        --email-dir .data/mail [--acknowledged acks.jsonl] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SAGA_HEADER = "X-Saga-Instance"
_SAGA_HEADER_RE = re.compile(rb"^X-Saga-Instance: *(\d+)\r?$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Ack:
    """A write the API acknowledged: its event is at ``position``, version ``version``."""

    stream_id: str
    version: int
    position: int


@dataclass
class Report:
    """What the check counted, and each disagreement it found."""

    events: int = 0
    streams: int = 0
    users: int = 0
    deleted: int = 0
    welcomes: int = 0
    sagas: dict[str, int] = field(default_factory=dict)
    emails: int | None = None
    acknowledged: int | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    crash_window_emails: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        sagas = ", ".join(f"{k} {v}" for k, v in sorted(self.sagas.items())) or "none"
        return (
            f"events {self.events}, users {self.users} ({self.deleted} deleted), "
            f"welcomes {self.welcomes}, sagas: {sagas}, emails {self.emails}, "
            f"acknowledged writes {self.acknowledged}, lost {self.lost}, "
            f"duplicated {self.duplicated}, mismatched {self.mismatched}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _problem(report: Report, kind: str, message: str, limit: int = 50) -> None:
    if kind == "lost":
        report.lost += 1
    elif kind == "duplicated":
        report.duplicated += 1
    elif kind == "mismatched":
        report.mismatched += 1
    if len(report.problems) < limit:
        report.problems.append(f"{kind}: {message}")
    elif len(report.problems) == limit:
        report.problems.append("... (more problems not listed)")


# --- where emails are counted ----------------------------------------------------------


def emails_in_outbox() -> list[str]:
    """Saga ids of the emails Django's locmem backend holds (this process's sends)."""
    from django.core import mail

    return [str(m.extra_headers.get(SAGA_HEADER)) for m in getattr(mail, "outbox", [])]


def emails_in_dir(directory: str | Path) -> list[str]:
    """Saga ids of the emails the file backend wrote into ``directory`` (any process)."""
    found: list[str] = []
    for path in sorted(Path(directory).glob("*.log")):
        found += [m.decode() for m in _SAGA_HEADER_RE.findall(path.read_bytes())]
    return found


def emails_by_process(directory: str | Path) -> list[tuple[str, int]]:
    """(saga instance id, sending process group) of each email ProcessFileBackend wrote."""
    sent = []
    for path in sorted(Path(directory).glob("*.log")):
        pgid = int(path.name.split("-", 1)[0])
        sent += [(m.decode(), pgid) for m in _SAGA_HEADER_RE.findall(path.read_bytes())]
    return sent


UNCOMMITTED = "uncommitted:"  # marks a copy only SIGKILLed workers sent


def without_crash_window_copies(
    sent: list[tuple[str, int]], killed: set[int]
) -> tuple[list[str], int]:
    """Emails per saga, dropping extra copies that a SIGKILLed worker sent.

    Such a copy is the documented window (README, "The welcome email"): the mail server
    accepted the message and the process died before the saga's transaction committed.
    Extra copies from a process that was not killed are kept, so the check flags them.
    """
    by_saga: dict[str, list[int]] = {}
    for saga_id, pgid in sent:
        by_saga.setdefault(saga_id, []).append(pgid)
    kept: list[str] = []
    window = 0
    for saga_id, senders in by_saga.items():
        survivors = [pgid for pgid in senders if pgid not in killed]
        if survivors:
            kept += [saga_id] * len(survivors)
        else:
            # Every sender was killed: the last one may have committed (one email, saga
            # completed) or not, and the saga then cancelled for a user deleted meanwhile.
            kept.append(UNCOMMITTED + saga_id)
        window += len(senders) - max(len(survivors), 1)
    return kept, window


def read_acks(path: str | Path) -> list[Ack]:
    """Acknowledged writes, one JSON object per line (as bench/locustfile.py writes them)."""
    acks = []
    with open(path) as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                acks.append(Ack(record["stream_id"], record["version"], record["position"]))
    return acks


# --- the check --------------------------------------------------------------------------


def _check_streams(report: Report, cursor: Any) -> None:
    cursor.execute("SELECT count(*) FROM events")
    report.events = cursor.fetchone()[0]
    cursor.execute("SELECT count(*) FROM streams")
    report.streams = cursor.fetchone()[0]
    cursor.execute(
        """
        SELECT s.stream_id, s.version, e.n, e.lo, e.hi
        FROM streams s
        FULL JOIN (SELECT stream_id, count(*) AS n, min(version) AS lo, max(version) AS hi
                   FROM events GROUP BY stream_id) e USING (stream_id)
        WHERE s.version IS NULL OR e.n IS NULL
           OR NOT (e.lo = 0 AND e.hi = s.version AND e.n = s.version + 1)
        """
    )
    for stream_id, version, n, lo, hi in cursor.fetchall():
        _problem(
            report,
            "mismatched",
            f"stream {stream_id}: row says version {version}, events {n} from {lo} to {hi}",
        )


def _replay_users(cursor: Any) -> dict[uuid.UUID, dict[str, Any]]:
    """Every user stream folded through the aggregate, plus what the projection records."""
    from eventstore.personal import KeyRing
    from eventstore.types import registry
    from users.aggregate import User

    keys = KeyRing()
    cursor.execute(
        "SELECT stream_id, version, position, transaction_id::text, event_type, schema_version, "
        "data::text, recorded_at FROM events WHERE category = 'user' ORDER BY stream_id, version"
    )
    users: dict[uuid.UUID, dict[str, Any]] = {}
    for stream_id, version, position, xid, event_type, schema_version, data, at in cursor:
        user_id = uuid.UUID(stream_id.split("-", 1)[1])
        entry = users.get(user_id)
        if entry is None:
            entry = users[user_id] = {
                "user": User(user_id),
                "created_at": at,
                "types": [],
            }
        entry["user"].apply(registry.decode(event_type, schema_version, data, keys))
        entry["user"].version = version
        entry["position"] = position
        entry["updated_at"] = at
        entry["types"].append(event_type)
        entry.setdefault("history", []).append(f"v{version} {event_type} @({xid}, {position})")
    return users


def _check_read_model(report: Report, users: dict[uuid.UUID, dict[str, Any]]) -> None:
    from users.models import UserRecord

    rows = {row.id: row for row in UserRecord.objects.all()}
    for user_id, entry in users.items():
        user = entry["user"]
        row = rows.pop(user_id, None)
        if row is None:
            _problem(report, "lost", f"user {user_id} has a stream but no read-model row")
            continue
        expected = {
            "email": user.email,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "status": user.status,
            "welcomed_at": user.welcomed_at,
            "version": user.version,
            "last_position": entry["position"],
            "created_at": entry["created_at"],
            "updated_at": entry["updated_at"],
        }
        actual = {name: getattr(row, name) for name in expected}
        if actual != expected:
            diff = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
            _problem(
                report,
                "mismatched",
                f"user {user_id} row != replay: {diff}; stream: {', '.join(entry['history'])}",
            )
    for user_id in rows:
        _problem(report, "duplicated", f"read-model row {user_id} has no stream behind it")


def _check_welcomes_and_sagas(
    report: Report, users: dict[uuid.UUID, dict[str, Any]], emails: list[str] | None
) -> None:
    from sagas.models import SagaInstance

    sagas = {s.correlation_key: s for s in SagaInstance.objects.filter(saga_type="welcome")}
    report.sagas = dict(Counter(s.status for s in sagas.values()))
    sent = Counter(e.removeprefix(UNCOMMITTED) for e in emails) if emails is not None else None
    uncommitted = {e.removeprefix(UNCOMMITTED) for e in emails or () if e.startswith(UNCOMMITTED)}
    if emails is not None:
        report.emails = len(emails)
    for user_id, entry in users.items():
        types = entry["types"]
        welcomes = types.count("UserWelcomed")
        report.welcomes += welcomes
        deleted = "UserDeleted" in types
        report.deleted += deleted
        deleted_first = deleted and (
            welcomes == 0 or types.index("UserDeleted") < types.index("UserWelcomed")
        )
        if welcomes > 1:
            _problem(report, "duplicated", f"user {user_id} welcomed {welcomes} times")
        elif welcomes == 0 and not deleted_first:
            _problem(report, "lost", f"user {user_id} was never welcomed")
        elif welcomes == 1 and deleted_first:
            _problem(report, "mismatched", f"user {user_id} welcomed after being deleted")

        saga = sagas.pop(str(user_id), None)
        if saga is None:
            _problem(report, "lost", f"user {user_id} has no welcome saga")
            continue
        # Deleted after its welcome: mailed if the email went out first, else cancelled.
        expected = (
            {"cancelled"}
            if deleted_first
            else {"completed", "cancelled"}
            if deleted
            else {"completed"}
        )
        if saga.status not in expected:
            _problem(
                report,
                "mismatched",
                f"saga {saga.pk} of user {user_id} is {saga.status} at {saga.step} "
                f"(expected {' or '.join(sorted(expected))}; last error {saga.last_error!r})",
            )
        if sent is not None:
            copies = sent.pop(str(saga.pk), 0)
            skipped = "email_skipped" in saga.data  # the address had a welcome lately
            wanted = 1 if saga.status == "completed" and not skipped else 0
            if saga.status == "cancelled" and str(saga.pk) in uncommitted:
                wanted = copies  # sent, then killed before the commit; cancelled since
            if copies > wanted:
                _problem(report, "duplicated", f"saga {saga.pk} sent {copies} emails")
            elif copies < wanted:
                _problem(report, "lost", f"saga {saga.pk} (user {user_id}) sent no email")
    for key, saga in sagas.items():
        _problem(report, "duplicated", f"saga {saga.pk} for {key}, which has no user stream")
    for saga_id, copies in (sent or {}).items():
        _problem(report, "duplicated", f"{copies} email(s) from saga {saga_id}, which is unknown")


def _check_acks(report: Report, cursor: Any, acks: Iterable[Ack]) -> None:
    acks = list(acks)
    report.acknowledged = len(acks)
    stored: dict[int, tuple[str, int]] = {}
    positions = sorted({ack.position for ack in acks})
    for start in range(0, len(positions), 10_000):
        cursor.execute(
            "SELECT position, stream_id, version FROM events WHERE position = ANY(%s)",
            [positions[start : start + 10_000]],
        )
        stored.update({p: (s, v) for p, s, v in cursor.fetchall()})
    for ack in acks:
        if stored.get(ack.position) != (ack.stream_id, ack.version):
            _problem(
                report,
                "lost",
                f"acknowledged write {ack} is not stored there (found {stored.get(ack.position)})",
            )


def _check_subscribers(report: Report) -> None:
    from eventstore import progress, subscribers
    from eventstore.models import Checkpoint, ParkedStream

    for name in ("users", "welcome-saga"):
        subscriber = subscribers.get(name)
        if not Checkpoint.objects.filter(name=name).exists():
            if report.events:
                _problem(report, "mismatched", f"subscriber {name} never ran")
        elif any(progress.has_pending(p) for p in subscribers.partitions_of(subscriber)):
            _problem(report, "mismatched", f"subscriber {name} has not caught up")
        for parked in ParkedStream.objects.filter(subscriber=name):
            _problem(report, "mismatched", f"{name} parked {parked.stream_id}: {parked.error}")
        checkpoint = Checkpoint.objects.filter(name=name).first()
        if checkpoint is not None:
            report.checkpoints[name] = (
                f"{checkpoint.cursor_transaction_id}/{checkpoint.cursor_position}"
                f" after {checkpoint.events_processed} events"
            )


def check(*, emails: list[str] | None = None, acknowledged: Iterable[Ack] | None = None) -> Report:
    """Compare events, read model, sagas and (if given) emails and acknowledged writes."""
    from django.db import connection

    report = Report()
    with connection.cursor() as cursor:
        _check_streams(report, cursor)
        users = _replay_users(cursor)
        report.users = len(users)
        if acknowledged is not None:
            _check_acks(report, cursor, acknowledged)
    _check_subscribers(report)
    _check_read_model(report, users)
    _check_welcomes_and_sagas(report, users, emails)
    return report


def quiet() -> bool:
    """Subscribers caught up and no saga open: the moment to check (cheap to poll)."""
    from eventstore import progress, subscribers
    from sagas.models import SagaInstance

    if SagaInstance.objects.filter(status__in=["started", "waiting"]).exists():
        return False
    return not any(
        progress.has_pending(partition)
        for name in ("users", "welcome-saga")
        for partition in subscribers.partitions_of(subscribers.get(name))
    )


def wait_until_consistent(
    timeout: float,
    *,
    emails: Callable[[], list[str]] | None = None,
    acknowledged: Iterable[Ack] | None = None,
) -> Report:
    """Poll until the run has gone quiet and the check passes; else fail with the problems.

    Waiting is for subscribers, sagas and workers still finishing; the deadline only
    bounds a hung run, the assertion is on the final state.
    """
    acks = list(acknowledged) if acknowledged is not None else None
    deadline = time.monotonic() + timeout
    while True:
        report = None
        if quiet():
            report = check(emails=emails() if emails else None, acknowledged=acks)
            if report.ok:
                return report
        if time.monotonic() > deadline:
            report = report or check(emails=emails() if emails else None, acknowledged=acks)
            raise AssertionError(
                f"not consistent after {timeout}s: {report.summary()}\n"
                + "\n".join(report.problems)
            )
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--email-dir", help="directory of the file email backend")
    parser.add_argument("--acknowledged", help="JSON lines of acknowledged writes")
    parser.add_argument(
        "--killed",
        default="",
        help="comma-separated process groups that were SIGKILLed: with --email-dir, extra "
        "copies they sent are counted as crash-window duplicates, not as errors "
        "(needs EMAIL_BACKEND=tests.faults.ProcessFileBackend)",
    )
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for quiet")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    deadline = time.monotonic() + args.wait
    while not quiet() and time.monotonic() < deadline:
        time.sleep(0.5)
    emails = None
    window = 0
    if args.email_dir and args.killed:
        killed = {int(pgid) for pgid in args.killed.split(",") if pgid}
        emails, window = without_crash_window_copies(emails_by_process(args.email_dir), killed)
    elif args.email_dir:
        emails = emails_in_dir(args.email_dir)
    report = check(
        emails=emails, acknowledged=read_acks(args.acknowledged) if args.acknowledged else None
    )
    report.crash_window_emails = window
    if args.json:
        print(json.dumps(report.as_dict(), default=str, indent=2))
    else:
        print(report.summary())
        for problem in report.problems:
            print(" ", problem)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
