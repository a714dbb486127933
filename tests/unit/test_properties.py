"""Property-based tests (Hypothesis): the aggregate and event (de)serialization."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.types import registry
from tests.unit.test_personal_data import MemoryKeyRing
from users.aggregate import User
from users.errors import UserError
from users.events import UserCreated, UserDeleted, UserUpdated, UserWelcomed

names = st.one_of(
    st.text(min_size=0, max_size=120),
    st.sampled_from(["Ada", "  Ada  ", "Grace", "A" * 100, "A" * 101, "\t", "Li\u202e"]),
)
emails = st.one_of(
    st.emails().map(lambda e: e[:254]),
    st.sampled_from(["ada@example.com", "ADA@example.com", "not-an-email", ""]),
)
moments = st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1))
commands = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.none() | emails, st.none() | names, st.none() | names),
        st.tuples(st.just("delete")),
        st.tuples(st.just("welcome"), moments),
    ),
    max_size=25,
)


def replay(user_id: uuid.UUID, events: list[object]) -> User:
    user = User(user_id)
    for event in events:
        user.apply(event)
        user.version += 1
    return user


STATE = ("email", "first_name", "last_name", "status", "welcomed_at", "version")


@settings(max_examples=300, deadline=None)
@given(email=emails, first=names, last=names, steps=commands)
@pytest.mark.slow
def test_any_command_sequence_equals_the_replay_of_its_events(email, first, last, steps) -> None:
    user_id = uuid.uuid4()
    try:
        user = User.create(user_id, email, first, last)
    except UserError:
        return
    for step in steps:
        try:
            if step[0] == "update":
                user.update(email=step[1], first_name=step[2], last_name=step[3])
            elif step[0] == "delete":
                user.delete()
            else:
                user.welcome(step[1])
        except UserError:
            pass  # a refused command must record nothing, which the replay checks
    events = user.pending_events
    rebuilt = replay(user_id, events)
    assert tuple(getattr(rebuilt, f) for f in STATE) == tuple(getattr(user, f) for f in STATE)
    assert user.version == len(events) - 1

    # The rules, read off the history.
    assert isinstance(events[0], UserCreated)
    assert sum(isinstance(e, UserCreated) for e in events) == 1
    assert sum(isinstance(e, UserWelcomed) for e in events) <= 1
    deleted_at = next((i for i, e in enumerate(events) if isinstance(e, UserDeleted)), None)
    if deleted_at is not None:
        assert deleted_at == len(events) - 1
    for event in events:
        if isinstance(event, UserUpdated):
            changed = [event.email, event.first_name, event.last_name]
            assert any(value is not None for value in changed)
        for field in ("first_name", "last_name"):
            value = getattr(event, field, None)
            if value is not None:
                assert value == value.strip()
                assert 1 <= len(value) <= 100


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text())


@settings(max_examples=300, deadline=None)
@given(
    user_id=st.uuids(),
    email=st.text(),
    first=st.text(),
    last=st.text(),
    optional=st.none() | st.text(),
    at=st.datetimes(timezones=st.just(UTC)),
)
def test_event_serialization_round_trips(user_id, email, first, last, optional, at) -> None:
    for event in (
        UserCreated(user_id=user_id, email=email, first_name=first, last_name=last),
        UserUpdated(user_id=user_id, first_name=optional),
        UserDeleted(user_id=user_id),
        UserWelcomed(user_id=user_id, welcomed_at=at),
    ):
        entry, text = registry.encode(event, keys := MemoryKeyRing())
        assert registry.decode(entry.name, entry.version, text, keys) == event
