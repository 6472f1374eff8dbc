"""Regenerate docs/demo.png: the demo page mid-conversation, at 1280x800.

    .venv/bin/python -m tests.browser.demo_screenshot [OUT.png]

Starts its own embedded-mode server in a temporary folder and drives Debian's Chromium.
tests/browser/test_screenshot.py runs the same scene, so this script cannot rot unnoticed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.browser import support
from tests.support.server import ROOT, ServerProcess
from tests.support.tokens import SECRET, bearer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

DEFAULT_OUT = ROOT / "docs" / "demo.png"
NAMES = {"alice": "Alice Chen", "bob": "Bob Martin", "carol": "Carol Diaz"}


def _post(
    base_url: str, path: str, user: str, body: dict[str, object], **claims: str
) -> dict[str, Any]:
    headers = bearer(user, name=NAMES.get(user, user), **claims)
    response = httpx.post(f"{base_url}/api/v1{path}", json=body, headers=headers, timeout=10)
    response.raise_for_status()
    return dict(response.json())


def _say(base_url: str, user: str, group_id: str, text: str) -> None:
    _post(base_url, f"/groups/{group_id}/messages", user, {"content": text})


def capture(browser: Browser, base_url: str, out: Path) -> None:
    """Stage a conversation with two people online, then screenshot Alice's page."""
    from playwright.sync_api import expect

    study = _post(
        base_url, "/groups", "alice", {"name": "CS101 Study group", "member_ids": ["bob", "carol"]}
    )["group_id"]
    chess = _post(base_url, "/groups", "bob", {"name": "Chess club", "member_ids": ["alice"]})
    robots = _post(base_url, "/groups", "carol", {"name": "Robotics lab", "member_ids": ["alice"]})

    contexts = [browser.new_context(viewport=support.VIEWPORT) for _ in range(2)]  # type: ignore[arg-type]
    try:
        alice, bob = (context.new_page() for context in contexts)
        support.sign_in_dev(alice, base_url, "alice", NAMES["alice"])
        support.sign_in_dev(bob, base_url, "bob", NAMES["bob"])
        for page in (alice, bob):
            support.open_group(page, "CS101 Study group")

        lines = [
            ("carol", "Has anyone started problem set 3?"),
            ("bob", "Yes! Question 2 is tricky: it is recursion again."),
            ("alice", "I can share my notes on tree traversal after the lecture."),
            ("carol", "That would be great. Library at 4pm?"),
            ("bob", "Works for me, room B12 is free."),
            ("alice", "See you there. I'll bring the whiteboard markers."),
        ]
        pages = {"alice": alice, "bob": bob}
        for number, (user, text) in enumerate(lines, start=1):
            if user in pages:
                support.send(pages[user], text)
            else:
                _say(base_url, user, study, text)
            support.expect_messages(alice, [t for _, t in lines[:number]])

        _say(base_url, "bob", chess["group_id"], "Rematch tonight?")
        _say(base_url, "bob", chess["group_id"], "I have been practising the Sicilian.")
        _say(base_url, "carol", robots["group_id"], "The new servo motors arrived.")
        for title, content in [
            ("Assignment due", "Problem set 3 is due Monday at 09:00."),
            ("Room change", "CS101 moves to room B12 this Friday."),
        ]:
            _post(
                base_url,
                "/notifications",
                "timetable",
                {"user_ids": ["alice"], "type": "course", "title": title, "content": content},
                role="service",
            )

        groups = alice.locator("#groups .group")
        expect(groups.filter(has_text="Chess club").locator(".unread")).to_have_text("2")
        expect(groups.filter(has_text="Robotics lab").locator(".unread")).to_have_text("1")
        expect(alice.locator("#notif-badge")).to_have_text("2")
        expect(alice.locator("#notifications .notice")).to_have_count(2)
        expect(alice.locator("#online .chip")).to_have_text(["alice", "bob"])
        expect(alice.locator("#conn-state")).to_have_attribute("data-state", "connected")
        alice.locator("#msg-input").fill("Sounds good")
        out.parent.mkdir(parents=True, exist_ok=True)
        alice.screenshot(path=str(out), animations="disabled", caret="hide")
    finally:
        for context in contexts:
            context.close()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    reason = support.missing()
    if reason is not None:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {"JWT_SECRET": SECRET, "SQLITE_PATH": str(Path(tmp) / "demo.db")}
        server = ServerProcess(env, Path(tmp)).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(**support.launch_options())
                try:
                    capture(browser, server.base_url, out)
                finally:
                    browser.close()
        finally:
            server.stop()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
