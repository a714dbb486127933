"""The staff console in a real browser: Chromium driven by Playwright, against a live
server and a real Celery worker. Saves screenshots; with ``SAVE_SCREENSHOTS=1`` into
docs/img (the ones the README shows), else into pytest's temporary directory.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``);
Playwright's own browser download is not used. Without it the tests skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connections

from eventstore.admin_views import DASHBOARD_CACHE_KEY
from tests.conftest import settle
from tests.e2e.helpers import new_user
from tests.processes import wait_for
from users.models import UserRecord

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (uv sync installs the dev group)"
)
expect = sync_api.expect

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


@pytest.fixture
def page(monkeypatch) -> Iterator[Any]:
    """A Chromium page (1440 px wide, as in the screenshots), closed after the test."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium")
    # Playwright's sync API runs an event loop in this thread; Django would take the ORM
    # calls the test makes between browser steps for calls from async code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()
            # The test's ORM calls, made under Playwright's event loop, opened a connection
            # pytest-django's teardown does not close; left open, the test database
            # cannot be dropped at the end of the run.
            connections.close_all()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return DOCS_IMAGES if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path


def screenshot(page: Any, name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"admin-{name}.png"), full_page=True)


def test_staff_follow_users_from_the_api_to_their_events(
    page, shots, live_server, celery_worker, api
) -> None:
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    base = live_server.url

    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pass-123")
    page.click("input[type=submit]")
    expect(page.locator("#content h1")).to_have_text("Site administration")

    ada = new_user(api, email="ada@example.com", first_name="Ada", last_name="Lovelace")
    grace = new_user(api, email="grace@example.com", first_name="Grace", last_name="Hopper")
    wait_for(
        lambda: UserRecord.objects.exclude(welcomed_at=None).count() == 2,
        60,
        "the worker to project and welcome both users",
    )
    ada_stream = f"user-{ada['id']}"

    # The streams, then Ada's stream found by its id: a timeline of her events.
    page.goto(f"{base}/admin/eventstore/stream/")
    expect(page.locator("#result_list")).to_contain_text(ada_stream)
    expect(page.locator("#result_list")).to_contain_text(f"user-{grace['id']}")
    screenshot(page, "streams", shots)
    page.fill("#searchbar", ada_stream)
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.click(f"#result_list a:text-is('{ada_stream}')")
    entries = page.locator("ol.timeline > li")
    expect(entries).to_have_count(2)
    expect(entries.nth(0).locator(".event-type")).to_have_text("UserCreated")
    expect(entries.nth(1).locator(".event-type")).to_have_text("UserWelcomed")
    expect(entries.nth(0).locator(".json-string").first).to_be_visible()
    expect(page.locator("#content")).to_contain_text("User (read model): Ada Lovelace")
    screenshot(page, "stream-timeline", shots)

    # An event: its payload, and the chain UserCreated -> saga -> UserWelcomed.
    entries.nth(1).locator(".event-type").click()
    expect(page.locator("#cause-link")).to_contain_text("UserCreated")
    expect(page.locator(".field-pretty_data .json-key").first).to_have_text('"user_id"')
    screenshot(page, "event", shots)
    page.click("#cause-link")
    expect(page.locator("#caused")).to_contain_text("UserWelcomed")
    expect(page.locator("#related")).to_contain_text("Saga: welcome")

    # A replay of the users projection, run by the worker, its progress polled.
    page.goto(f"{base}/admin/eventstore/checkpoint/")
    page.click("#sub-users .replay-button")
    expect(page.locator("#content")).to_contain_text("Rebuild users from the first event?")
    page.click("input[type=submit][value='Yes, replay it']")
    expect(page.locator(".messagelist")).to_contain_text("Replay of users queued")
    done = page.locator("#sub-users .replay[data-state='done']")
    expect(done).to_be_visible(timeout=60_000)
    page.wait_for_load_state("load")
    expect(done.locator(".replay-text")).to_contain_text("done 4/4 events")
    screenshot(page, "subscribers", shots)

    # The live tail: the history, then a user created now appears without a reload.
    settle()
    page.goto(f"{base}/admin/eventstore/event/tail/?category=user")
    expect(page.locator("#tail-status")).to_have_text("live")
    expect(page.locator("#tail-body tr")).to_have_count(4)
    katherine = new_user(api, email="kj@example.com", first_name="Katherine", last_name="Johnson")
    arrived = page.locator("#tail-body tr", has_text=f"user-{katherine['id']}")
    expect(arrived.filter(has_text="UserCreated")).to_have_count(1, timeout=30_000)
    expect(page.locator("#tail-count")).not_to_have_text("0")
    wait_for(
        lambda: UserRecord.objects.exclude(welcomed_at=None).count() == 3,
        60,
        "the third welcome",
    )
    expect(page.locator("#tail-body tr")).to_have_count(6, timeout=30_000)
    screenshot(page, "live-tail", shots)

    # The dashboard on the admin index (not the one cached when the login landed there).
    cache.delete(DASHBOARD_CACHE_KEY)
    page.goto(f"{base}/admin/")
    expect(page.locator("#es-chart rect.bar").first).to_be_visible()
    expect(page.locator("#es-by-type")).to_contain_text("UserWelcomed")
    screenshot(page, "dashboard", shots)
