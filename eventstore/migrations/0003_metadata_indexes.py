"""Expression indexes for the staff console: events by correlation and by cause.

The admin searches events by ``metadata->>'correlation_id'`` and lists the events an
event caused (``metadata->>'causation_id'``); without these indexes each look-up reads
the whole events table. They are built CONCURRENTLY, so appends go on while a large
table is indexed; that needs a migration outside a transaction, one statement at a time.
A build that failed half-way leaves an invalid index, hence the DROP before each CREATE.
RunSQL, not AddIndex: the ORM model does not declare indexes on JSON expressions.
"""

from django.db import migrations

INDEXES = {
    "events_correlation_idx": "correlation_id",
    "events_causation_idx": "causation_id",
}


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("eventstore", "0002_append_only")]

    operations = [
        migrations.RunSQL(
            sql=[
                f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
                f"CREATE INDEX CONCURRENTLY {name} ON events ((metadata->>'{key}'))",
            ],
            reverse_sql=[f"DROP INDEX CONCURRENTLY IF EXISTS {name}"],
        )
        for name, key in INDEXES.items()
    ]
