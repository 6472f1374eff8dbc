"""End to end: the demo page at / in headless Chromium against a real embedded-mode server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser import support
from tests.browser.support import expect_messages, open_group, send, sign_in_dev, sign_in_token
from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Page

pytestmark = pytest.mark.timeout(180)

NewPage = Callable[..., "Page"]
ServerFactory = Callable[..., ServerProcess]


def create_group(server: ServerProcess, owner: str, name: str, members: list[str]) -> str:
    response = httpx.post(
        f"{server.base_url}/api/v1/groups",
        json={"name": name, "member_ids": members},
        headers=bearer(owner),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["group_id"])


def notify(server: ServerProcess, user: str, title: str, content: str) -> None:
    response = httpx.post(
        f"{server.base_url}/api/v1/notifications",
        json={"user_ids": [user], "type": "course", "title": title, "content": content},
        headers=bearer("timetable-service", role="service"),
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_two_users_chat_live(server_factory: ServerFactory, new_page: NewPage) -> None:
    from playwright.sync_api import expect

    server = server_factory()
    alice, bob = new_page(), new_page()
    sign_in_dev(alice, server.base_url, "alice", "Alice")
    sign_in_token(bob, server.base_url, token("bob"))

    # Alice creates the group in the page; it opens at once.
    alice.fill("#group-name", "Chess club")
    alice.fill("#group-members", "bob")
    alice.click("#create-group button[type=submit]")
    expect(alice.locator("#chat-title")).to_have_text("Chess club")
    send(alice, "Hi Bob")
    expect_messages(alice, ["Hi Bob"])

    # Bob was added while online: the group shows up with its unread count, live.
    bob_group = bob.locator("#groups .group", has_text="Chess club")
    expect(bob_group.locator(".unread")).to_have_text("1")
    open_group(bob, "Chess club")
    expect_messages(bob, ["Hi Bob"])
    expect(bob_group.locator(".unread")).to_have_count(0)  # seen, so marked read
    expect(bob.locator("#online .chip")).to_have_text(["alice", "bob"])

    send(bob, "Hi Alice")
    expect_messages(alice, ["Hi Bob", "Hi Alice"])
    expect_messages(bob, ["Hi Bob", "Hi Alice"])
    expect(alice.locator("#messages li.msg").last.locator(".sender")).to_have_text("Bob")

    # An image message: an <img> whose src is the (http) URL, on both sides.
    picture = f"{server.base_url}/static/no-such-picture.png"
    alice.select_option("#msg-kind", "2")
    send(alice, picture)
    for page in (alice, bob):
        image = page.locator("#messages li.msg img")
        expect(image).to_have_count(1)
        assert image.evaluate("img => img.src") == picture
    alice.select_option("#msg-kind", "1")
    send(alice, "Fancy a game?")
    expect_messages(alice, ["Hi Bob", "Hi Alice", "Fancy a game?"])
    expect_messages(bob, ["Hi Bob", "Hi Alice", "Fancy a game?"])
    # Bob had the group open and visible: everything is read, as the server confirms.
    expect(bob_group).to_have_attribute("data-read-seq", "4")
    groups = httpx.get(f"{server.base_url}/api/v1/groups", headers=bearer("bob"), timeout=10)
    assert [g["unread_count"] for g in groups.json()["items"]] == [0]


def test_reopened_page_sees_every_message_once_in_order(
    server_factory: ServerFactory, new_page: NewPage
) -> None:
    server = server_factory()
    create_group(server, "alice", "Study group", ["bob"])
    alice, bob = new_page(), new_page()
    sign_in_dev(alice, server.base_url, "alice")
    sign_in_dev(bob, server.base_url, "bob")
    for page in (alice, bob):
        open_group(page, "Study group")
    send(bob, "see you at the library")
    expect_messages(alice, ["see you at the library"])

    bob_context = bob.context
    bob.close()
    missed = [f"note {i}" for i in range(1, 7)]
    for text in missed:
        send(alice, text)
    expected = ["see you at the library", *missed]
    expect_messages(alice, expected)

    # Bob comes back: signed in from storage, his last group reopened, nothing lost or doubled.
    again = new_page(bob_context)
    again.goto(f"{server.base_url}/")
    support.wait_connected(again)
    expect_messages(again, expected)
    send(again, "back")
    expect_messages(alice, [*expected, "back"])
    expect_messages(again, [*expected, "back"])


def test_pages_survive_a_server_restart(server_factory: ServerFactory, new_page: NewPage) -> None:
    from playwright.sync_api import expect

    server = server_factory()
    create_group(server, "alice", "Robotics", ["bob"])
    alice, bob = new_page(), new_page()
    sign_in_dev(alice, server.base_url, "alice")
    sign_in_dev(bob, server.base_url, "bob")
    for page in (alice, bob):
        open_group(page, "Robotics")
    send(alice, "before 1")
    expect_messages(bob, ["before 1"])
    send(bob, "before 2")
    expect_messages(alice, ["before 1", "before 2"])

    server.stop()
    for page in (alice, bob):
        expect(page.locator("#conn-state")).not_to_have_attribute("data-state", "connected")
    send(alice, "while down")  # waits in the SDK's outbox
    expect(alice.locator("#pending li")).to_have_count(1)

    # Same port, same SQLite file: a restart, not a new service.
    server_factory(port=server.port)
    for page in (alice, bob):
        support.wait_connected(page, timeout=support.RECONNECT_TIMEOUT_MS)
    expected = ["before 1", "before 2", "while down"]
    expect_messages(alice, expected)
    expect_messages(bob, expected)

    send(bob, "after 1")
    expect_messages(alice, [*expected, "after 1"])
    send(alice, "after 2")
    expected += ["after 1", "after 2"]
    expect_messages(alice, expected)
    expect_messages(bob, expected)


def test_notifications_arrive_live_with_a_badge(
    server_factory: ServerFactory, new_page: NewPage
) -> None:
    from playwright.sync_api import expect

    server = server_factory()
    bob = new_page()
    sign_in_dev(bob, server.base_url, "bob", "Bob")
    badge = bob.locator("#notif-badge")
    expect(badge).to_be_hidden()
    expect(bob.locator("#no-notifications")).to_be_visible()

    notify(server, "bob", "Room change", "CS101 moves to B12")
    expect(badge).to_have_text("1")
    expect(badge).to_be_visible()
    notify(server, "bob", "Exam date", "Friday 9:00")
    expect(badge).to_have_text("2")
    titles = bob.locator("#notifications .notice .title")
    expect(titles).to_have_text(["Exam date", "Room change"])  # newest first

    bob.locator("#notifications .notice", has_text="Room change").get_by_text("Mark read").click()
    expect(badge).to_have_text("1")
    bob.reload()  # the read mark is on the server, not only in the page
    support.wait_connected(bob)
    expect(titles).to_have_text(["Exam date"])
    expect(badge).to_have_text("1")
    bob.click("#read-all")
    expect(badge).to_be_hidden()
    expect(bob.locator("#no-notifications")).to_be_visible()


def test_markup_in_messages_is_shown_as_text_and_runs_nothing(
    server_factory: ServerFactory, new_page: NewPage
) -> None:
    from playwright.sync_api import expect

    payload = "<img src=x onerror=alert(1)>"
    script = "<script>alert(2)</script>"
    server = server_factory()
    create_group(server, "bob", payload, ["mallory"])
    dialogs: list[str] = []
    mallory, bob = new_page(), new_page()
    for page in (mallory, bob):

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
    sign_in_dev(mallory, server.base_url, "mallory", payload)
    sign_in_dev(bob, server.base_url, "bob")
    for page in (mallory, bob):
        open_group(page, payload)
    send(mallory, payload)
    send(mallory, script)
    notify(server, "bob", payload, script)

    for page in (mallory, bob):
        expect_messages(page, [payload, script])
        expect(page.locator("#messages li.msg .sender")).to_have_text([payload, payload])
        expect(page.locator("#chat-title")).to_have_text(payload)
        assert page.locator("#messages img, #groups img, #chat-title img").count() == 0
        src_x = "[...document.images].filter(i => i.getAttribute('src') === 'x').length"
        assert page.evaluate(src_x) == 0
        assert page.evaluate("document.querySelectorAll('#messages script').length") == 0
    expect(bob.locator("#notifications .notice .title")).to_have_text([payload])
    expect(bob.locator("#notifications .notice .content")).to_have_text([script])
    assert bob.locator("#notifications img, #notifications script").count() == 0

    # The listener does see dialogs: a probe after everything rendered is the only one.
    bob.evaluate("() => alert('probe')")
    assert dialogs == ["probe"]
