"""Given events, when a command, then events (or an error): the User rules, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from users.aggregate import User
from users.errors import AlreadyWelcomed, InvalidUserData, StaleVersion, UserIsDeleted
from users.events import UserCreated, UserDeleted, UserUpdated, UserWelcomed

ID = uuid.UUID("7d4c52a2-5f1e-4c55-9d3f-3d0a4b7b2a01")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CREATED = UserCreated(user_id=ID, email="ada@example.com", first_name="Ada", last_name="Lovelace")


def given(*events: object) -> User:
    user = User(ID)
    for event in events:
        user.apply(event)
        user.version += 1
    user.loaded_version = user.version
    return user


class TestCreate:
    def test_records_created_with_normalised_fields(self) -> None:
        user = User.create(ID, "  Ada@Example.COM ", "  Ada ", "Lovelace")
        assert user.pending_events == [CREATED]
        assert user.version == 0

    @pytest.mark.parametrize(
        ("email", "first", "last", "fields"),
        [
            ("not-an-email", "Ada", "Lovelace", {"email"}),
            ("", "Ada", "Lovelace", {"email"}),
            ("a@" + "x" * 260 + ".com", "Ada", "Lovelace", {"email"}),
            ("ada@example.com", "   ", "Lovelace", {"first_name"}),
            ("ada@example.com", "A" * 101, "Lovelace", {"first_name"}),
            ("ada@example.com", "Ada", "Love\nlace", {"last_name"}),
            ("ada@example.com", "Ada", "Love\x00lace", {"last_name"}),
            ("ada@example.com", "Ada\u202e", "Lovelace", {"first_name"}),
            (42, None, "", {"email", "first_name", "last_name"}),
        ],
    )
    def test_rejects_bad_fields_naming_each(self, email, first, last, fields) -> None:
        with pytest.raises(InvalidUserData) as caught:
            User.create(ID, email, first, last)
        assert set(caught.value.errors) == fields

    def test_accepts_names_of_exactly_100_characters_and_any_script(self) -> None:
        user = User.create(ID, "z@example.com", "A" * 100, "Ŀøvélàcé 李")
        assert user.pending_events[0].first_name == "A" * 100


class TestUpdate:
    def test_records_only_changed_fields(self) -> None:
        user = given(CREATED)
        user.update(email="ADA@example.com", first_name="Augusta", last_name="Lovelace")
        assert user.pending_events == [UserUpdated(user_id=ID, first_name="Augusta")]
        assert user.first_name == "Augusta"

    def test_change_that_changes_nothing_records_nothing(self) -> None:
        user = given(CREATED)
        user.update(email=" ada@EXAMPLE.com", first_name="Ada ")
        user.update()
        assert user.pending_events == []
        assert user.version == 0

    def test_invalid_value_records_nothing(self) -> None:
        user = given(CREATED)
        with pytest.raises(InvalidUserData) as caught:
            user.update(first_name="Grace", email="nope")
        assert set(caught.value.errors) == {"email"}
        assert user.pending_events == []

    def test_deleted_user_cannot_be_updated(self) -> None:
        user = given(CREATED, UserDeleted(user_id=ID))
        with pytest.raises(UserIsDeleted):
            user.update(first_name="Grace")


class TestDelete:
    def test_records_deleted(self) -> None:
        user = given(CREATED)
        user.delete()
        assert user.pending_events == [UserDeleted(user_id=ID)]
        assert user.status == "deleted"

    def test_cannot_delete_twice(self) -> None:
        with pytest.raises(UserIsDeleted):
            given(CREATED, UserDeleted(user_id=ID)).delete()


class TestWelcome:
    def test_records_welcomed_once(self) -> None:
        user = given(CREATED)
        user.welcome(NOW)
        assert user.pending_events == [UserWelcomed(user_id=ID, welcomed_at=NOW)]
        with pytest.raises(AlreadyWelcomed):
            user.welcome(NOW)

    def test_history_with_a_welcome_refuses_another(self) -> None:
        with pytest.raises(AlreadyWelcomed):
            given(CREATED, UserWelcomed(user_id=ID, welcomed_at=NOW)).welcome(NOW)

    def test_deleted_user_is_not_welcomed(self) -> None:
        with pytest.raises(UserIsDeleted):
            given(CREATED, UserDeleted(user_id=ID)).welcome(NOW)


def test_replaying_history_rebuilds_state() -> None:
    user = given(
        CREATED,
        UserUpdated(user_id=ID, last_name="King"),
        UserWelcomed(user_id=ID, welcomed_at=NOW),
    )
    assert (user.email, user.first_name, user.last_name) == ("ada@example.com", "Ada", "King")
    assert (user.status, user.welcomed_at, user.version) == ("active", NOW, 2)


class TestIfMatchRule:
    """A write based on a version conflicts only with changes after it, not bookkeeping."""

    WELCOMED = UserWelcomed(user_id=ID, welcomed_at=NOW)

    def test_a_welcome_after_the_clients_version_is_no_conflict(self) -> None:
        user = given(CREATED, self.WELCOMED)
        user.check_unchanged_since(0)
        user.check_unchanged_since(1)

    def test_a_change_after_the_clients_version_is_a_conflict(self) -> None:
        user = given(CREATED, self.WELCOMED, UserUpdated(user_id=ID, last_name="King"))
        with pytest.raises(StaleVersion) as caught:
            user.check_unchanged_since(1)
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        user.check_unchanged_since(2)

    def test_a_welcome_after_a_change_leaves_the_change_deciding(self) -> None:
        user = given(CREATED, UserUpdated(user_id=ID, last_name="King"), self.WELCOMED)
        with pytest.raises(StaleVersion):
            user.check_unchanged_since(0)
        user.check_unchanged_since(1)

    def test_a_version_the_stream_never_had_is_a_conflict(self) -> None:
        with pytest.raises(StaleVersion):
            given(CREATED).check_unchanged_since(1)

    def test_recorded_events_count_like_loaded_ones(self) -> None:
        user = given(CREATED)
        user.welcome(NOW)
        user.check_unchanged_since(0)
        user.update(last_name="King")
        with pytest.raises(StaleVersion):
            user.check_unchanged_since(1)
