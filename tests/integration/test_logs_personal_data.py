"""No personal data in any log line: a create, update and erase go through the API, the
subscribers, the welcome saga and its email while every record is captured at DEBUG."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import mail
from rest_framework.test import APIClient

from config import logs
from sagas.models import SagaInstance
from tests.processes import wait_for
from users.models import UserRecord

pytestmark = pytest.mark.django_db(transaction=True)

PERSONAL = ["zebulon.quist@example.org", "Zebulon", "Quistgaard", "ysolde.wren@example.net",
            "Ysolde", "Wrenfield", "zebulon.quist", "ysolde.wren"]  # fmt: skip


@pytest.fixture
def captured(celery_worker) -> Iterator[io.StringIO]:
    """Every record of this process (the API and the in-process worker) at DEBUG, as JSON;
    added after the worker started, whose logging setup would replace it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.slow
def test_a_person_leaves_no_trace_in_the_logs(api, captured) -> None:
    officer_user = get_user_model().objects.create_user(username="officer", is_staff=True)
    officer_user.user_permissions.add(*Permission.objects.filter(codename="erase_user"))
    officer = APIClient()
    officer.force_login(officer_user)

    created = api.post(
        "/v1/users",
        {"email": PERSONAL[0], "first_name": PERSONAL[1], "last_name": PERSONAL[2]},
        format="json",
    )
    assert created.status_code == 201
    user_id = created.json()["id"]
    wait_for(
        lambda: SagaInstance.objects.filter(status="completed").exists(), 60, "the welcome email"
    )
    assert mail.outbox[0].to == [PERSONAL[0]]  # the email went out, and its text was logged?
    updated = api.patch(
        f"/v1/users/{user_id}",
        {"email": PERSONAL[3], "first_name": PERSONAL[4], "last_name": PERSONAL[5]},
        format="json",
    )
    assert updated.status_code == 200
    wait_for(
        lambda: UserRecord.objects.filter(id=user_id, first_name=PERSONAL[4]).exists(),
        60,
        "the update in the read model",
    )
    assert officer.post(f"/v1/users/{user_id}/erase").status_code == 200
    wait_for(
        lambda: not UserRecord.objects.filter(id=user_id, first_name=PERSONAL[4]).exists(),
        60,
        "the erasure in the read model",
    )

    text = captured.getvalue()
    assert user_id in text  # the lines name the user by id
    assert '"email sent"' in text
    leaked = [
        (value, line)
        for line in text.splitlines()
        for value in PERSONAL
        if value.lower() in line.lower()
    ]
    assert not leaked, leaked[:5]
