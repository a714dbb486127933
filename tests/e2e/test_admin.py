"""The staff console (Django admin) through the real URLs: access, read-only guarantees,
links, filters, search, the live tail, the dashboard and the operations (subscriber
retry, projection replay with a real Celery worker, saga retry and cancel)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventstore import admin_shared, admin_views, store, subscribers, subscriptions
from eventstore.context import message_context
from eventstore.models import Checkpoint, Event, ParkedStream, Stream
from eventstore.replay import REPLAY_LOCK_NAMESPACE, replay_lock_key
from eventstore.tasks import replay_progress_key, replay_projection
from sagas import runner
from sagas.models import SagaInstance
from tests import processes
from tests.conftest import settle
from tests.events import Noted
from tests.processes import wait_for
from tests.testapp.models import Switch, Tally
from users import handlers
from users.commands import CreateUser, UpdateUser
from users.models import UserRecord

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = "/admin/"
EVENTS = "/admin/eventstore/event/"
STREAMS = "/admin/eventstore/stream/"
SUBSCRIBERS = "/admin/eventstore/checkpoint/"
PARKED = "/admin/eventstore/parkedstream/"
SKIPPED = "/admin/eventstore/skippedevent/"
SAGAS = "/admin/sagas/sagainstance/"
USERS = "/admin/users/userrecord/"
TAIL = "/admin/eventstore/event/tail/"
TAIL_FEED = "/admin/eventstore/event/tail/feed/"
DASHBOARD = "/admin/eventstore/event/dashboard/"


# --- helpers ----------------------------------------------------------------------------


def create_user(**fields: Any) -> uuid.UUID:
    command = CreateUser(
        email=fields.pop("email", f"a{uuid.uuid4().hex[:10]}@example.com"),
        first_name=fields.pop("first_name", "Ada"),
        last_name=fields.pop("last_name", "Lovelace"),
    )
    with message_context(actor="user:tester"):
        return handlers.handle(command).user.id


def catch_up(*names: str) -> None:
    settle()
    for name in names or ("users", "welcome-saga"):
        subscriptions.catch_up(subscribers.get(name))


def run_welcome(user_id: uuid.UUID) -> SagaInstance:
    """Run the welcome saga in-process up to UserWelcomed (caused by UserCreated)."""
    catch_up("welcome-saga")
    instance = SagaInstance.objects.get(correlation_key=str(user_id))
    assert runner.run(instance.pk, max_steps=1) == "send_email"
    catch_up()
    return SagaInstance.objects.get(pk=instance.pk)


def event(user_id: uuid.UUID, event_type: str) -> Event:
    return Event.objects.get(stream_id=f"user-{user_id}", event_type=event_type)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_user(username: str, *perms: str, staff: bool = True, active: bool = True) -> Any:
    user = get_user_model().objects.create_user(
        username=username, password="pass-12345-word", is_staff=staff, is_active=active
    )
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


@pytest.fixture
def admin_client(transactional_db) -> Client:
    """A superuser (named admin_client like pytest-django's, which this replaces)."""
    user = get_user_model().objects.create_superuser("root", "root@example.com", "root-pass-123")
    return login(user)


@pytest.fixture
def staff_with(transactional_db) -> Callable[..., Client]:
    def make(*perms: str) -> Client:
        return login(make_user(f"staff-{uuid.uuid4().hex[:6]}", *perms))

    return make


def events_url(**query: str) -> str:
    return EVENTS + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def listed_positions(response: Any) -> list[int]:
    return [obj.position for obj in response.context["cl"].result_list]


def pages(user_id: uuid.UUID | None = None) -> list[str]:
    """Every page of the console (with an event and a stream when a user is given)."""
    urls = [ADMIN, EVENTS, STREAMS, SUBSCRIBERS, SAGAS, USERS, TAIL, TAIL_FEED, DASHBOARD,
            PARKED, SKIPPED]  # fmt: skip
    if user_id is not None:
        created = event(user_id, "UserCreated")
        urls += [
            f"{EVENTS}{created.position}/change/",
            f"{STREAMS}user-{user_id}/change/",
            f"{USERS}{user_id}/change/",
            f"{SUBSCRIBERS}{Checkpoint.objects.get(name='users').pk}/change/",
            f"{SUBSCRIBERS}users/replay/",
        ]
    return urls


# --- access -----------------------------------------------------------------------------


class TestAccess:
    def test_anonymous_is_sent_to_the_login_page(self) -> None:
        user_id = create_user()
        catch_up()
        for url in pages(user_id):
            response = Client().get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/admin/login/"), url

    def test_non_staff_and_inactive_staff_are_sent_to_the_login_page(self, client_user) -> None:
        inactive = make_user("gone", "eventstore.view_event", active=False)
        for client in (login(client_user), login(inactive)):
            for url in pages():
                response = client.get(url)
                assert response.status_code == 302, url
                assert response["Location"].startswith("/admin/login/"), url

    def test_staff_without_permissions_sees_nothing_of_the_events(self, staff) -> None:
        user_id = create_user(first_name="Secret")
        catch_up()
        index = staff.get(ADMIN)
        assert index.status_code == 200
        body = index.content.decode()
        assert "es-dashboard-slot" not in body
        assert EVENTS not in body
        assert STREAMS not in body
        for url in pages(user_id)[1:]:
            response = staff.get(url)
            assert response.status_code == 403, url
            assert b"Secret" not in response.content
        action = staff.post(f"{SUBSCRIBERS}users/replay/")
        assert action.status_code == 403

    def test_stream_viewer_without_event_permission_gets_no_timeline(self, staff_with) -> None:
        user_id = create_user(first_name="Hidden")
        client = staff_with("eventstore.view_stream")
        response = client.get(f"{STREAMS}user-{user_id}/change/")
        assert response.status_code == 200
        assert b'id="timeline-hidden"' in response.content
        assert b"Hidden" not in response.content
        assert b"UserCreated" not in response.content
        assert client.get(EVENTS).status_code == 403
        assert client.get(TAIL_FEED).status_code == 403

    def test_event_viewer_reaches_the_event_pages_only(self, staff_with) -> None:
        user_id = create_user()
        client = staff_with("eventstore.view_event")
        assert client.get(EVENTS).status_code == 200
        assert (
            client.get(f"{EVENTS}{event(user_id, 'UserCreated').position}/change/").status_code
            == 200
        )
        assert client.get(TAIL).status_code == 200
        assert client.get(DASHBOARD).status_code == 200
        assert b"es-dashboard-slot" in client.get(ADMIN).content
        assert client.get(STREAMS).status_code == 403
        assert client.get(SUBSCRIBERS).status_code == 403
        assert client.get(SAGAS).status_code == 403

    def test_a_superuser_reaches_every_page(self, admin_client) -> None:
        user_id = create_user()
        catch_up()
        for url in pages(user_id):
            assert admin_client.get(url).status_code == 200, url


# --- read-only --------------------------------------------------------------------------


class TestReadOnly:
    def test_events_cannot_be_added_changed_or_deleted_even_by_a_superuser(
        self, admin_client
    ) -> None:
        user_id = create_user()
        created = event(user_id, "UserCreated")
        before = list(Event.objects.values().order_by("position"))
        change = f"{EVENTS}{created.position}/change/"
        assert admin_client.get(f"{EVENTS}add/").status_code == 403
        assert admin_client.post(f"{EVENTS}add/", {"event_type": "X"}).status_code == 403
        assert admin_client.post(change, {"event_type": "Forged"}).status_code == 403
        assert admin_client.get(f"{EVENTS}{created.position}/delete/").status_code == 403
        assert (
            admin_client.post(f"{EVENTS}{created.position}/delete/", {"post": "yes"}).status_code
            == 403
        )
        bulk = admin_client.post(
            EVENTS,
            {"action": "delete_selected", "_selected_action": [created.position], "post": "yes"},
        )
        assert bulk.status_code in (200, 302)
        page = admin_client.get(change)
        assert page.status_code == 200
        assert b'name="_save"' not in page.content
        assert b"deletelink" not in page.content
        assert list(Event.objects.values().order_by("position")) == before

    @pytest.mark.parametrize(
        ("base", "key"),
        [(STREAMS, "stream"), (USERS, "user"), (SUBSCRIBERS, "checkpoint"), (SAGAS, "saga")],
    )
    def test_other_models_are_read_only_too(self, admin_client, base: str, key: str) -> None:
        user_id = create_user()
        catch_up()
        pk = {
            "stream": f"user-{user_id}",
            "user": str(user_id),
            "checkpoint": str(Checkpoint.objects.get(name="users").pk),
            "saga": str(SagaInstance.objects.get().pk),
        }[key]
        sagas = list(SagaInstance.objects.values())
        assert admin_client.get(f"{base}add/").status_code == 403
        assert admin_client.post(f"{base}{pk}/change/", {"status": "deleted"}).status_code == 403
        assert admin_client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403
        assert admin_client.get(f"{base}{pk}/change/").status_code == 200
        assert Stream.objects.count() == UserRecord.objects.count() == 1
        assert Checkpoint.objects.filter(name="users").exists()
        assert list(SagaInstance.objects.values()) == sagas

    def test_page_views_write_nothing(self, admin_client) -> None:
        user_id = create_user()
        catch_up()
        with CaptureQueriesContext(connection) as queries:
            for url in pages(user_id):
                assert admin_client.get(url).status_code == 200
        writes = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
        assert [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(writes)] == []


# --- streams ----------------------------------------------------------------------------


class TestStreams:
    def test_list_filter_and_search(self, admin_client) -> None:
        first, second = create_user(), create_user()
        handlers.handle(UpdateUser(user_id=first, first_name="Grace"))
        store.append("note-1", [Noted(text="hi")])
        response = admin_client.get(STREAMS)
        assert response.status_code == 200
        rows = {s.stream_id: s for s in response.context["cl"].result_list}
        assert set(rows) == {f"user-{first}", f"user-{second}", "note-1"}
        body = response.content.decode()
        assert f'<a href="{STREAMS}user-{first}/change/">' in body
        assert '<td class="field-event_count">2</td>' in body  # version 1: two events
        users_only = admin_client.get(STREAMS + "?category=user")
        assert {s.category for s in users_only.context["cl"].result_list} == {"user"}
        assert len(users_only.context["cl"].result_list) == 2
        found = admin_client.get(STREAMS + f"?q=user-{str(first)[:8]}")
        assert [s.stream_id for s in found.context["cl"].result_list] == [f"user-{first}"]
        assert b'href="?category=note"' in admin_client.get(STREAMS).content  # a filter choice

    def test_the_stream_page_is_a_timeline_with_causal_links(self, admin_client) -> None:
        user_id = create_user(first_name="<script>alert(1)</script>")
        run_welcome(user_id)
        created, welcomed = event(user_id, "UserCreated"), event(user_id, "UserWelcomed")
        response = admin_client.get(f"{STREAMS}user-{user_id}/change/")
        assert response.status_code == 200
        body = response.content.decode()
        assert [i["event"].event_type for i in response.context["timeline"]] == [
            "UserCreated",
            "UserWelcomed",
        ]
        assert f'href="{EVENTS}{created.position}/change/"' in body
        # UserWelcomed was caused by UserCreated (through the saga): a link to it.
        assert f'class="causation" href="{EVENTS}{created.position}/change/"' in body
        correlation = welcomed.metadata["correlation_id"]
        assert correlation == created.metadata["correlation_id"]
        assert f'class="correlation" href="{EVENTS}?q={correlation}"' in body
        assert "<code>user:tester</code>" in body
        assert "<code>saga:welcome</code>" in body
        assert '<span class="json-key">&quot;first_name&quot;</span>' in body
        assert "<script>alert(1)</script>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "User (read model): &lt;script&gt;" in body  # the related read-model row

    def test_long_timelines_are_paged(self, admin_client, monkeypatch) -> None:
        from eventstore import admin as eventstore_admin

        monkeypatch.setattr(eventstore_admin, "TIMELINE_PAGE", 2)
        user_id = create_user()
        for name in ("B", "C", "D"):
            handlers.handle(UpdateUser(user_id=user_id, first_name=name))
        url = f"{STREAMS}user-{user_id}/change/"
        first = admin_client.get(url)
        assert [i["event"].version for i in first.context["timeline"]] == [0, 1]
        assert b"?from_version=2#timeline" in first.content
        second = admin_client.get(url + "?from_version=2")
        assert [i["event"].version for i in second.context["timeline"]] == [2, 3]
        assert b"?from_version=0#timeline" in second.content
        assert admin_client.get(url + "?from_version=nope").status_code == 200


# --- events -----------------------------------------------------------------------------


class TestEvents:
    def test_the_global_feed_newest_first(self, admin_client) -> None:
        first, second = create_user(), create_user()
        response = admin_client.get(EVENTS)
        assert response.status_code == 200
        positions = listed_positions(response)
        assert positions == sorted(positions, reverse=True)
        assert len(positions) == 2
        body = response.content.decode()
        for user_id in (first, second):  # short in the list, whole in the tooltip
            link = f'<a href="{STREAMS}user-{user_id}/change/" title="user-{user_id}">'
            assert f"{link}user-{str(user_id)[:8]}…</a>" in body

    def test_filters_by_category_type_and_date(self, admin_client) -> None:
        user_id = create_user()
        handlers.handle(UpdateUser(user_id=user_id, last_name="King"))
        store.append("note-1", [Noted(text="hi")])
        by_category = admin_client.get(events_url(category="note"))
        assert [Event.objects.get(position=p).stream_id for p in listed_positions(by_category)] == [
            "note-1"
        ]
        by_type = admin_client.get(events_url(event_type="UserUpdated"))
        assert [Event.objects.get(position=p).event_type for p in listed_positions(by_type)] == [
            "UserUpdated"
        ]
        listing = admin_client.get(EVENTS)
        (recorded,) = [f for f in listing.context["cl"].filter_specs if f.title == "recorded at"]
        (today,) = [c for c in recorded.choices(listing.context["cl"]) if c["display"] == "Today"]
        assert len(listed_positions(admin_client.get(EVENTS + today["query_string"]))) == 3
        midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        before = admin_client.get(EVENTS, {"recorded_at__lt": midnight.isoformat()})
        assert listed_positions(before) == []
        choices = admin_client.get(EVENTS).content.decode()
        for choice in ("?category=note", "?category=user", "?event_type=UserUpdated"):
            assert choice in choices

    def test_search_by_stream_event_correlation_position_and_bare_id(self, admin_client) -> None:
        user_id, other = create_user(), create_user()
        handlers.handle(UpdateUser(user_id=user_id, first_name="Bea"))
        created, updated = event(user_id, "UserCreated"), event(user_id, "UserUpdated")
        mine = {created.position, updated.position}

        def search(term: str) -> set[int]:
            response = admin_client.get(EVENTS, {"q": term})
            assert response.status_code == 200
            return set(listed_positions(response))

        assert search(f"user-{user_id}") == mine
        assert search(str(user_id)) == mine  # the bare id finds the stream user-<id>
        assert search(str(created.event_id)) == {created.position}
        assert search(created.metadata["correlation_id"]) == {created.position}
        assert search(str(updated.position)) == {updated.position}
        assert search(f"user-{uuid.uuid4()}") == set()
        assert search("no such thing") == set()
        assert event(other, "UserCreated").position not in search(f"user-{user_id}")

    def test_correlation_search_uses_the_expression_index(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute(
                "EXPLAIN SELECT * FROM events WHERE metadata->>'correlation_id' = 'x' "
                "OR metadata->>'causation_id' = 'y'"
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("RESET enable_seqscan")
        assert "events_correlation_idx" in plan
        assert "events_causation_idx" in plan

    def test_the_detail_shows_payloads_and_where_it_sits_in_the_causal_chain(
        self, admin_client
    ) -> None:
        user_id = create_user(email="chain@example.com")
        instance = run_welcome(user_id)
        created, welcomed = event(user_id, "UserCreated"), event(user_id, "UserWelcomed")

        response = admin_client.get(f"{EVENTS}{created.position}/change/")
        assert response.status_code == 200
        body = response.content.decode()
        assert f'<a href="{STREAMS}user-{user_id}/change/">user-{user_id}</a>' in body
        assert '<span class="json-string">&quot;chain@example.com&quot;</span>' in body
        assert '<span class="json-key">&quot;correlation_id&quot;</span>' in body
        assert [e.position for e, _ in response.context["caused"]] == [welcomed.position]
        assert f'<a href="{EVENTS}{welcomed.position}/change/">UserWelcomed' in body
        assert f'href="{SAGAS}{instance.pk}/change/"' in body  # the saga that handled it
        assert "a command or request, not a stored event" in body  # a root event

        response = admin_client.get(f"{EVENTS}{welcomed.position}/change/")
        body = response.content.decode()
        assert response.context["cause"].position == created.position
        assert f'id="cause-link" href="{EVENTS}{created.position}/change/"' in body
        assert (
            f'id="correlation-link" href="{EVENTS}?q={created.metadata["correlation_id"]}"' in body
        )

    def test_pagination_never_counts_the_whole_table(self, admin_client, monkeypatch) -> None:
        for _ in range(3):
            create_user()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE events")
        monkeypatch.setattr(admin_shared, "EXACT_COUNT_BELOW", 0)  # as if there were millions
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(EVENTS)
        assert response.status_code == 200
        counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        assert counts == []
        assert response.context["cl"].paginator.is_estimate
        assert b'title="estimated by the query planner">about</span>' in response.content

    def test_small_result_sets_are_counted_exactly(self, admin_client) -> None:
        create_user()
        response = admin_client.get(EVENTS)
        assert response.context["cl"].result_count == 1
        assert not response.context["cl"].paginator.is_estimate
        assert response.context["cl"].full_result_count is None  # no second count


# --- users read model -------------------------------------------------------------------


class TestUsersReadModel:
    def test_list_links_each_user_to_its_stream(self, admin_client) -> None:
        user_id = create_user(email="linked@example.com", last_name="Hopper")
        catch_up("users")
        response = admin_client.get(USERS)
        assert response.status_code == 200
        link = f'<a href="{STREAMS}user-{user_id}/change/" title="user-{user_id}">'
        assert f"{link}user-{str(user_id)[:8]}…</a>" in response.content.decode()
        for term in ("LINKED@example.com", str(user_id), "Hopper"):
            found = admin_client.get(USERS, {"q": term}).context["cl"].result_list
            assert [u.id for u in found] == [user_id], term
        detail = admin_client.get(f"{USERS}{user_id}/change/")
        assert f'href="{STREAMS}user-{user_id}/change/"' in detail.content.decode()
        assert b'name="_save"' not in detail.content


# --- subscribers ------------------------------------------------------------------------


def park_a_tally() -> ParkedStream:
    Switch.objects.create(name="fail")
    store.append("note-boom", [Noted(text="boom")])
    catch_up("test-tally")  # or a worker woken by the append gets there first
    wait_for(
        lambda: ParkedStream.objects.filter(subscriber="test-tally").exists(),
        30,
        "test-tally to park its stream",
    )
    return ParkedStream.objects.get(subscriber="test-tally")


class TestSubscribers:
    def test_every_subscriber_with_lag_activity_and_parked_streams(self, admin_client) -> None:
        create_user()
        catch_up("users")
        parked = park_a_tally()
        assert parked.error.startswith("RuntimeError: cannot tally")
        response = admin_client.get(SUBSCRIBERS)
        assert response.status_code == 200
        rows = {row["name"]: row for row in response.context["rows"]}
        assert set(rows) == {"users", "welcome-saga", "test-tally"}
        assert rows["users"]["events_processed"] == 1
        assert rows["welcome-saga"]["lag"] == 2  # it has not run: both events are ahead
        assert (rows["test-tally"]["state"], rows["test-tally"]["parked"]) == ("parked", 1)
        body = response.content.decode()
        assert 'href="/admin/eventstore/parkedstream/?subscriber=test-tally"' in body
        assert 'action="/admin/eventstore/checkpoint/test-tally/retry/"' in body
        assert 'action="/admin/eventstore/checkpoint/users/replay/"' in body
        assert 'action="/admin/eventstore/checkpoint/welcome-saga/replay/"' not in body
        listing = admin_client.get("/admin/eventstore/parkedstream/").content.decode()
        boom = Event.objects.get(stream_id="note-boom").position
        assert f'<a href="{EVENTS}{boom}/change/">test.Noted v0</a>' in listing

    def test_a_partitioned_subscriber_shows_each_partition(self, admin_client, settings) -> None:
        settings.SUBSCRIBER_PARTITIONS = {"test-tally": 3}
        for i in range(6):
            store.append(f"note-{i}", [Noted(text="p")])
        catch_up("test-tally")
        response = admin_client.get(SUBSCRIBERS)
        rows = {row["name"]: row for row in response.context["rows"]}
        assert [p["partition"] for p in rows["test-tally"]["partition_rows"]] == [0, 1, 2]
        assert sum(p["events_processed"] for p in rows["test-tally"]["partition_rows"]) == 6
        assert response.content.decode().count('data-name="test-tally" data-partition=') == 3

    @pytest.mark.slow
    def test_retry_parked_streams(self, admin_client, celery_worker) -> None:
        park_a_tally()
        Switch.objects.filter(name="fail").delete()
        response = admin_client.post(f"{SUBSCRIBERS}test-tally/retry/", follow=True)
        assert response.status_code == 200
        assert "1 parked stream(s) handled" in response.content.decode()
        assert not ParkedStream.objects.exists()
        assert Checkpoint.objects.get(name="test-tally").events_processed == 0
        assert Tally.objects.get(stream_id="note-boom").count == 1

    def test_operations_need_the_change_permission(self, staff_with) -> None:
        park_a_tally()
        viewer = staff_with("eventstore.view_checkpoint")
        page = viewer.get(SUBSCRIBERS)
        assert page.status_code == 200
        assert b"/retry/" not in page.content
        assert b"replay-button" not in page.content
        assert viewer.post(f"{SUBSCRIBERS}test-tally/retry/").status_code == 403
        assert viewer.post(f"{SUBSCRIBERS}users/replay/").status_code == 403
        assert viewer.get(f"{SUBSCRIBERS}test-tally/retry/").status_code == 405
        assert ParkedStream.objects.exists()

    @pytest.mark.slow
    def test_replay_runs_in_the_worker_and_reports_progress(
        self, admin_client, celery_worker, settings
    ) -> None:
        settings.WELCOME_DELAY_SECONDS = 3600  # no UserWelcomed: a known number of events
        ids = [create_user(first_name=f"U{i}") for i in range(3)]
        wait_for(lambda: UserRecord.objects.count() == 3, 30, "the worker to project")
        UserRecord.objects.filter(id=ids[0]).update(first_name="drifted")  # a broken read model

        asked = admin_client.post(f"{SUBSCRIBERS}users/replay/")
        assert asked.status_code == 200  # a confirmation page first: nothing queued yet
        assert "Yes, replay it" in asked.content.decode()
        assert cache.get(replay_progress_key("users")) is None
        response = admin_client.post(
            f"{SUBSCRIBERS}users/replay/", {"confirmed": "yes"}, follow=True
        )
        assert response.status_code == 200
        assert "Replay of users queued" in response.content.decode()

        def progress() -> dict[str, Any]:
            reply = admin_client.get(f"{SUBSCRIBERS}users/replay/")
            assert reply.status_code == 200
            return reply.json()["replay"] or {}

        wait_for(lambda: progress().get("state") == "done", 60, "the replay to finish")
        done = progress()
        assert (done["done"], done["total"]) == (3, 3)
        assert done["rows"] == {"users_user": 3}
        assert UserRecord.objects.get(id=ids[0]).first_name == "U0"
        page = admin_client.get(SUBSCRIBERS).content.decode()
        assert 'data-state="done"' in page

    def test_the_pages_survive_a_cache_outage(self, admin_client, monkeypatch) -> None:
        def down(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("Redis is down")

        for method in ("get", "get_many", "set"):
            monkeypatch.setattr(admin_views.cache, method, down)
        assert admin_client.get(SUBSCRIBERS).status_code == 200
        assert admin_client.get(DASHBOARD + "?fragment=1").status_code == 200
        assert admin_client.get(f"{SUBSCRIBERS}users/replay/").json()["replay"] is None

    def test_a_replay_is_refused_while_one_is_queued(self, admin_client) -> None:
        now = timezone.now().isoformat()
        cache.set(replay_progress_key("users"), {"state": "queued", "updated_at": now})
        response = admin_client.post(
            f"{SUBSCRIBERS}users/replay/", {"confirmed": "yes"}, follow=True
        )
        assert "A replay of users is already queued." in response.content.decode()

    def test_only_projections_replay(self, admin_client) -> None:
        response = admin_client.post(f"{SUBSCRIBERS}welcome-saga/replay/", follow=True)
        assert "cannot replay" in response.content.decode()
        assert cache.get(replay_progress_key("welcome-saga")) is None
        assert admin_client.post(f"{SUBSCRIBERS}nobody/replay/").status_code == 404
        assert admin_client.post(f"{SUBSCRIBERS}nobody/retry/").status_code == 404

    def test_the_replay_task_runs_once_at_a_time(self) -> None:
        create_user()
        catch_up("users")
        lock = [REPLAY_LOCK_NAMESPACE, replay_lock_key("users")]
        with psycopg.connect(processes.test_database_url(), autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", lock)
            assert replay_projection("users") == "busy"
            assert cache.get(replay_progress_key("users")) is None
            other.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
        assert replay_projection("users") == "done"
        assert cache.get(replay_progress_key("users"))["rows"] == {"users_user": 1}
        assert replay_projection("welcome-saga") == "not a projection"


# --- sagas ------------------------------------------------------------------------------


class TestSagas:
    def test_list_and_status_filter(self, admin_client) -> None:
        waiting, done = create_user(), create_user()
        welcome_instance = run_welcome(done)
        SagaInstance.objects.filter(pk=welcome_instance.pk).update(status="completed")
        response = admin_client.get(SAGAS + "?status__exact=waiting")
        assert [i.correlation_key for i in response.context["cl"].result_list] == [str(waiting)]
        assert b'href="?saga_type=welcome"' in admin_client.get(SAGAS).content
        assert len(admin_client.get(SAGAS + "?saga_type=welcome").context["cl"].result_list) == 2
        found = admin_client.get(SAGAS, {"q": str(done)}).context["cl"].result_list
        assert [i.pk for i in found] == [welcome_instance.pk]
        detail = admin_client.get(f"{SAGAS}{welcome_instance.pk}/change/").content.decode()
        assert f'href="{STREAMS}user-{done}/change/"' in detail
        created = event(done, "UserCreated")
        assert f'<a href="{EVENTS}{created.position}/change/">{created.event_id}</a>' in detail

    def test_cancel_action(self, admin_client, settings) -> None:
        settings.WELCOME_DELAY_SECONDS = 3600
        user_id = create_user()
        catch_up("welcome-saga")
        instance = SagaInstance.objects.get(correlation_key=str(user_id))
        response = admin_client.post(
            SAGAS, {"action": "cancel", "_selected_action": [instance.pk]}, follow=True
        )
        assert "1 saga(s) cancelled." in response.content.decode()
        instance.refresh_from_db()
        assert instance.status == "cancelled"
        assert instance.last_error == "cancelled by root in the admin"
        again = admin_client.post(
            SAGAS, {"action": "cancel", "_selected_action": [instance.pk]}, follow=True
        )
        assert "cannot be cancelled" in again.content.decode()

    @pytest.mark.slow
    def test_retry_action_runs_a_failed_saga_to_the_end(
        self, admin_client, settings, celery_worker
    ) -> None:
        settings.WELCOME_DELAY_SECONDS = 3600
        user_id = create_user()
        wait_for(
            lambda: SagaInstance.objects.filter(correlation_key=str(user_id)).exists(),
            30,
            "the saga to start",
        )
        instance = SagaInstance.objects.get(correlation_key=str(user_id))
        SagaInstance.objects.filter(pk=instance.pk).update(
            status="failed", attempts=8, last_error="SMTPError: gone", next_attempt_at=None
        )
        response = admin_client.post(
            SAGAS, {"action": "retry", "_selected_action": [instance.pk]}, follow=True
        )
        assert "1 saga(s) queued for a retry." in response.content.decode()
        wait_for(
            lambda: SagaInstance.objects.get(pk=instance.pk).status == "completed",
            60,
            "the retried saga to complete",
        )
        assert Event.objects.filter(event_type="UserWelcomed").count() == 1

    @pytest.mark.slow
    def test_actions_need_the_change_permission(self, staff_with, settings) -> None:
        settings.WELCOME_DELAY_SECONDS = 3600
        create_user()
        catch_up("welcome-saga")
        instance = SagaInstance.objects.get()
        viewer = staff_with("sagas.view_sagainstance")
        page = viewer.get(SAGAS)
        assert page.status_code == 200
        assert b'value="cancel"' not in page.content
        viewer.post(SAGAS, {"action": "cancel", "_selected_action": [instance.pk]})
        assert SagaInstance.objects.get().status == "waiting"


# --- live tail --------------------------------------------------------------------------


class TestLiveTail:
    def test_the_page_offers_the_categories(self, admin_client) -> None:
        create_user()
        store.append("note-1", [Noted(text="hi")])
        response = admin_client.get(TAIL + "?category=note")
        assert response.status_code == 200
        body = response.content.decode()
        assert '<option value="note" selected>note</option>' in body
        assert '<option value="user">user</option>' in body
        assert f'data-feed-url="{TAIL_FEED}"' in body

    def test_history_then_only_new_events_never_twice(self, admin_client) -> None:
        first = [create_user() for _ in range(3)]
        settle()
        opened = admin_client.get(TAIL_FEED).json()
        assert [e["stream_id"] for e in opened["events"]] == [f"user-{u}" for u in first]
        assert (
            opened["events"][0]["event_url"] == f"{EVENTS}{opened['events'][0]['position']}/change/"
        )
        assert opened["events"][0]["actor"] == "user:tester"

        quiet = admin_client.get(TAIL_FEED, {"after": opened["next_cursor"]}).json()
        assert quiet["events"] == []

        later = [create_user() for _ in range(2)]
        store.append("note-1", [Noted(text="hi")])
        settle()
        polled = admin_client.get(TAIL_FEED, {"after": quiet["next_cursor"]}).json()
        assert [e["stream_id"] for e in polled["events"]] == [
            *(f"user-{u}" for u in later),
            "note-1",
        ]
        assert polled["events"][-1]["summary"] == '{"text": "hi", "n": 0}'
        again = admin_client.get(TAIL_FEED, {"after": polled["next_cursor"]}).json()
        assert again["events"] == []

    def test_filtered_by_category(self, admin_client) -> None:
        store.append("note-1", [Noted(text="old")])
        settle()
        opened = admin_client.get(TAIL_FEED, {"category": "note"}).json()
        assert [e["stream_id"] for e in opened["events"]] == ["note-1"]
        create_user()
        store.append("note-2", [Noted(text="new")])
        settle()
        polled = admin_client.get(
            TAIL_FEED, {"category": "note", "after": opened["next_cursor"]}
        ).json()
        assert [e["stream_id"] for e in polled["events"]] == ["note-2"]

    @pytest.mark.parametrize("query", [{"after": "nope"}, {"category": "no such"}])
    def test_bad_parameters_are_a_400(self, admin_client, query: dict[str, str]) -> None:
        response = admin_client.get(TAIL_FEED, query)
        assert response.status_code == 400
        assert response.json()["error"]


# --- dashboard --------------------------------------------------------------------------


class TestDashboard:
    def test_the_index_loads_the_dashboard(self, admin_client) -> None:
        response = admin_client.get(ADMIN)
        body = response.content.decode()
        assert f'data-url="{DASHBOARD}?fragment=1"' in body
        for link in (DASHBOARD, TAIL, SUBSCRIBERS):
            assert f'href="{link}"' in body

    def test_chart_totals_and_subscribers_needing_attention(self, admin_client) -> None:
        for _ in range(2):
            create_user()
        store.append("note-1", [Noted(text="a"), Noted(text="b"), Noted(text="c")])
        catch_up("users")
        response = admin_client.get(DASHBOARD + "?fragment=1")
        assert response.status_code == 200
        body = response.content.decode()
        assert "<html" not in body  # a fragment for the index
        chart = response.context["chart"]
        assert chart["total"] == 5
        assert chart["peak"] in (2, 3, 5)
        assert len(chart["bars"]) == 60
        assert body.count('<rect class="bar"') in (1, 2)
        assert "5 events in the last hour" in body
        assert response.context["by_category"] == [("note", 3), ("user", 2)]
        assert ("UserCreated", 2) in response.context["by_type"]
        attention = {row["name"] for row in response.context["attention"]}
        assert attention == {"welcome-saga", "test-tally"}  # never ran; users caught up
        assert f'href="{EVENTS}?category=note"' in body
        full = admin_client.get(DASHBOARD)
        assert b"<html" in full.content
        assert b'id="es-chart"' in full.content

    def test_attention_shows_lag_in_seconds_and_the_parked_streams(self, admin_client) -> None:
        create_user()
        catch_up("users")
        parked = park_a_tally()
        cache.delete(admin_views.DASHBOARD_CACHE_KEY)
        response = admin_client.get(DASHBOARD + "?fragment=1")
        rows = {row["name"]: row for row in response.context["attention"]}
        saga = rows["welcome-saga"]  # never ran: its events wait, and they have an age
        assert saga["lag"] == 2
        assert saga["lag_seconds"] >= 0
        assert [p["stream_id"] for p in rows["test-tally"]["parked_shown"]] == ["note-boom"]
        body = response.content.decode()
        assert '<span class="es-warn lag">2 behind</span>' in body
        assert 'class="es-warn lag-age"' in body
        link = f'href="{admin_shared.stream_url(parked.stream_id)}">note-boom</a>'
        assert f"{link} at {parked.event_type} v0, 1 attempt" in body

    def test_totals_come_from_statistics_on_a_huge_table(self, admin_client, monkeypatch) -> None:
        for _ in range(3):
            create_user()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE events")
        monkeypatch.setattr(admin_views, "EXACT_TOTALS_BELOW", 0)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(DASHBOARD + "?fragment=1")
        assert response.context["approx"]
        assert response.context["by_type"] == [("UserCreated", 3)]
        assert not [q for q in queries if "GROUP BY 1 ORDER BY 2" in q["sql"]]
        assert "from statistics" in response.content.decode()


def test_highlight_json_escapes_everything() -> None:
    html = admin_shared.highlight_json({"k<": ["</pre><script>", 1.5, True, None]})
    assert "<script>" not in html
    assert '<span class="json-key">&quot;k&lt;&quot;</span>' in html
    assert '<span class="json-string">&quot;&lt;/pre&gt;&lt;script&gt;&quot;</span>' in html
    assert '<span class="json-number">1.5</span>' in html
    assert '<span class="json-literal">true</span>' in html
    assert html.startswith('<pre class="json">')
    assert html.count("</pre>") == 1
