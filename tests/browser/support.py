"""Headless Chromium (Debian's package) driven by Playwright, and the demo page's vocabulary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 20_000  # any single wait: a selector, a state, a list of messages
RECONNECT_TIMEOUT_MS = 30_000  # the SDK's backoff is capped at 5 s on the demo page


def chromium_path() -> str | None:
    """CHROMIUM_PATH, else Debian's /usr/bin/chromium, else one on PATH."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package 'playwright' is not installed (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium binary (apt-get install chromium, or set CHROMIUM_PATH)"
    return None


def launch_options() -> dict[str, Any]:
    return {"executable_path": chromium_path(), "args": CHROMIUM_ARGS, "timeout": 30_000}


# ---------------------------------------------------------------- the demo page


def sign_in_dev(page: Page, base_url: str, user: str, name: str | None = None) -> None:
    """Open the page and sign in with the development login."""
    page.goto(f"{base_url}/")
    page.fill("#dev-user", user)
    if name is not None:
        page.fill("#dev-name", name)
    page.click("#dev-form button[type=submit]")
    wait_connected(page)


def sign_in_token(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("#token-input", token)
    page.click("#token-form button[type=submit]")
    wait_connected(page)


def wait_connected(page: Page, timeout: float = TIMEOUT_MS) -> None:
    page.wait_for_selector('#conn-state[data-state="connected"]', timeout=timeout)


def open_group(page: Page, name: str) -> None:
    page.locator("#groups .group-button", has_text=name).click()
    page.wait_for_selector("#send-form:not([hidden])")
    page.locator("#chat-title", has_text=name).wait_for()


def send(page: Page, text: str) -> None:
    page.fill("#msg-input", text)
    page.press("#msg-input", "Enter")


def expect_messages(page: Page, texts: list[str], timeout: float = TIMEOUT_MS) -> None:
    """The open group shows exactly these messages, each once, in this order, none pending."""
    from playwright.sync_api import expect

    expect(page.locator("#messages li.msg .content")).to_have_text(texts, timeout=timeout)
    expect(page.locator("#pending li")).to_have_count(0, timeout=timeout)
