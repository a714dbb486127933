"""Tasks only the tests' workers know."""

from celery import shared_task
from django.db import connection


@shared_task(name="tests.testapp.tasks.fail_after_a_query", ignore_result=True)
def fail_after_a_query() -> None:
    """A task that fails with its connection in use, as a soft time limit would leave it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    raise RuntimeError("this task fails on purpose")
