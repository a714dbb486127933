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
from eventstore.models import Event
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


# Whether anything on the page is wider than the window or its content column: the page
# scrolls sideways, or a table is wider than the box that holds it (cut off).
OVERFLOW_JS = """() => {
  const problems = [];
  if (document.documentElement.scrollWidth > window.innerWidth)
    problems.push("page " + document.documentElement.scrollWidth + " > " + window.innerWidth);
  const content = document.querySelector("#content").getBoundingClientRect();
  for (const table of document.querySelectorAll("#content table")) {
    const box = table.getBoundingClientRect();
    if (box.right > content.right + 1 || box.right > window.innerWidth)
      problems.push((table.id || table.className) + " right edge " + box.right);
    const holder = table.parentElement;
    if (holder.scrollWidth > holder.clientWidth + 1)
      problems.push((table.id || table.className) + " cut off in its box");
  }
  return problems;
}"""
TIMESTAMP = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$"
PRECISE_TIMESTAMP = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6} UTC$"


def test_the_staff_console_fits_a_1366_pixel_screen(page, tmp_path, live_server, api) -> None:
    """A common laptop width: every list and page fits, one timestamp format with its time
    zone, the sidebar names subscribers as the page does, and read-only pages offer no
    history."""
    import re
    import uuid

    from tests.e2e.helpers import project
    from users import handlers
    from users.commands import WelcomeUser
    from users.models import ApiToken

    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    users = [
        new_user(api, email=f"grace.brewster.hopper{i}@example.org", first_name="Grace",
                 last_name="Brewster Murray Hopper")
        for i in range(3)
    ]  # fmt: skip
    handlers.handle(WelcomeUser(user_id=uuid.UUID(users[0]["id"])))
    project()
    event = Event.objects.order_by("position").first()
    stream = f"user-{users[0]['id']}"
    page.set_viewport_size({"width": 1366, "height": 768})
    base = live_server.url
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pass-123")
    page.click("input[type=submit]")
    expect(page.locator("#content h1")).to_have_text("Site administration")

    pages = {
        "events": "/admin/eventstore/event/",
        "streams": "/admin/eventstore/stream/",
        "users": "/admin/users/userrecord/",
        "tokens": "/admin/users/apitoken/",
        "subscribers": "/admin/eventstore/checkpoint/",
        "tail": "/admin/eventstore/event/tail/",
        "event": f"/admin/eventstore/event/{event.position}/change/",
        "stream": f"/admin/eventstore/stream/{stream}/change/",
        "user": f"/admin/users/userrecord/{users[0]['id']}/change/",
        "token": f"/admin/users/apitoken/{ApiToken.objects.get().pk}/change/",
    }
    for name, url in pages.items():
        page.goto(base + url)
        if name == "tail":
            expect(page.locator("#tail-body tr")).to_have_count(4)
        assert page.evaluate(OVERFLOW_JS) == [], name
        screenshot(page, f"1366-{name}", tmp_path)  # for a look when it fails; not docs

        # The sidebar calls the subscribers' page what the page calls itself.
        sidebar = page.locator("#nav-sidebar")
        expect(sidebar.get_by_role("link", name="Subscribers", exact=True)).to_have_count(1)
        expect(sidebar).not_to_contain_text("Checkpoints")

        # Read-only pages: nothing is ever edited there, so no "History".
        if name in ("event", "stream", "user"):
            expect(page.locator("a.historylink")).to_have_count(0)

        shown = []
        if name == "events":
            shown = page.locator("#result_list td.field-recorded").all_inner_texts()
            for column in ("recorded", "actor", "correlation"):
                cell = page.locator(f"#result_list td.field-{column}").first.bounding_box()
                assert cell["x"] + cell["width"] <= 1366, column
        elif name in ("users", "streams"):
            shown = page.locator("#result_list td[class*='_at']").all_inner_texts()
        elif name == "tokens":
            shown = page.locator("#result_list td.field-created_at").all_inner_texts()
        elif name == "tail":
            shown = page.locator("#tail-body tr td:nth-child(2)").all_inner_texts()
        elif name == "subscribers":
            shown = [
                t for t in page.locator("table td").all_inner_texts() if re.match(r"^\d{4}-", t)
            ]
        elif name == "stream":
            for text in page.locator("ol.timeline time").all_inner_texts():
                assert re.match(PRECISE_TIMESTAMP, text), text
        elif name == "event":
            text = page.locator(".field-recorded_precisely .readonly").inner_text()
            assert re.match(PRECISE_TIMESTAMP, text), text
        elif name in ("user", "token"):
            shown = [
                text
                for text in page.locator("fieldset .readonly").all_inner_texts()
                if re.match(r"^\d{4}-", text)
            ]
        for text in shown:
            assert re.match(TIMESTAMP, text), (name, text)
        if name in ("events", "users", "streams", "tokens", "tail"):
            assert shown, name

    # The users list: each row's stream id one line, not a UUID broken over five.
    page.goto(base + pages["users"])
    links = page.locator("#result_list td.field-stream_short a")
    expect(links).to_have_count(3)
    for i in range(3):
        assert links.nth(i).evaluate("a => a.getClientRects().length") == 1
        assert links.nth(i).get_attribute("title").startswith("user-")
