"""Master-key rotation: re-wrap every person key under the newest master key.

Person keys themselves never change (events stay readable); only their wrapping does.
"""

from __future__ import annotations

from django.db import connections, transaction

from eventstore.personal import TABLE, _unwrap, _wrap, keys_alias, master_keys


def rotate_master_key(*, batch_size: int = 1000, using: str = "default") -> int:
    """Re-wrap every person key under the current master key; the number re-wrapped.

    Batches of ``batch_size`` rows, each locked and committed in its own transaction,
    so appends and erasures wait at most one batch.
    """
    masters = master_keys()
    alias = keys_alias(using)
    done = 0
    while True:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                f"SELECT subject, wrapped_key, master_key_id FROM {TABLE} "
                "WHERE wrapped_key IS NOT NULL AND master_key_id <> %s "
                "ORDER BY subject LIMIT %s FOR UPDATE",
                [masters.current, batch_size],
            )
            rows = cursor.fetchall()
            if not rows:
                return done
            subjects = [row[0] for row in rows]
            rewrapped = [
                _wrap(subject, _unwrap(subject, bytes(wrapped), master_id, masters), masters)
                for subject, wrapped, master_id in rows
            ]
            cursor.execute(
                f"UPDATE {TABLE} AS k SET wrapped_key = v.w, master_key_id = %s "
                "FROM unnest(%s::text[], %s::bytea[]) AS v(s, w) WHERE k.subject = v.s",
                [masters.current, subjects, rewrapped],
            )
            done += len(rows)


def keys_by_master(using: str = "default") -> dict[str, int]:
    """How many live person keys each master key wraps (for operators)."""
    with connections[keys_alias(using)].cursor() as cursor:
        cursor.execute(
            f"SELECT master_key_id, count(*) FROM {TABLE} "
            "WHERE wrapped_key IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
        return dict(cursor.fetchall())
