"""PostgreSQL only: NOTIFY listening daemons about new jobs and cancel requests.

The trigger fires for rows written by any client, plain SQL included, so the daemon picks
them up at once instead of at its next poll. Other databases skip this migration's SQL.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION container_manager_notify_job() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('container_manager_jobs', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS container_manager_job_inserted ON container_manager_containerjob;
CREATE TRIGGER container_manager_job_inserted
    AFTER INSERT ON container_manager_containerjob
    FOR EACH ROW EXECUTE FUNCTION container_manager_notify_job();

DROP TRIGGER IF EXISTS container_manager_job_cancel_requested ON container_manager_containerjob;
CREATE TRIGGER container_manager_job_cancel_requested
    AFTER UPDATE OF cancel_requested_at ON container_manager_containerjob
    FOR EACH ROW WHEN (OLD.cancel_requested_at IS NULL AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION container_manager_notify_job();
"""

DROP = """
DROP TRIGGER IF EXISTS container_manager_job_inserted ON container_manager_containerjob;
DROP TRIGGER IF EXISTS container_manager_job_cancel_requested ON container_manager_containerjob;
DROP FUNCTION IF EXISTS container_manager_notify_job();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("container_manager", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
