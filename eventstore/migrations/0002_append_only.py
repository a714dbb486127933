"""Make the events table append-only, whoever the client is.

Statement-level triggers fire even when no row matches, so ``DELETE FROM events WHERE
false`` is refused too. A superuser can still bypass triggers (session_replication_role
or DROP TRIGGER); run the service under a non-superuser role.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE events ALTER COLUMN transaction_id SET DEFAULT pg_current_xact_id();

CREATE FUNCTION events_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Correct a mistake by appending a compensating event.';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS events_no_truncate ON events;
DROP TRIGGER IF EXISTS events_append_only ON events;
DROP FUNCTION IF EXISTS events_reject_change();
ALTER TABLE events ALTER COLUMN transaction_id DROP DEFAULT;
"""


class Migration(migrations.Migration):
    dependencies = [("eventstore", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
