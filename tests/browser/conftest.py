"""Browser fixtures: one headless Chromium per module, fresh contexts per user and test.

Without Chromium or the playwright package the tests skip, saying why; under CI=true they fail.
A failing test prints each page's console and the state of its connection indicator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.browser import support

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, so no Playwright event loop outlives the browser tests."""
    reason = support.missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(f"browser tests skipped: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(**support.launch_options())
        yield instance
        instance.close()


@pytest.fixture
def new_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    """Pages in fresh contexts (one per simulated user; pass a context to reopen in it).
    Uncaught errors in any page fail the test."""
    contexts: list[BrowserContext] = []
    pages: list[tuple[Page, list[str]]] = []
    errors: list[str] = []

    def make(context: BrowserContext | None = None) -> Page:
        if context is None:
            context = browser.new_context(viewport=support.VIEWPORT)  # type: ignore[arg-type]
            context.set_default_timeout(support.TIMEOUT_MS)
            contexts.append(context)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        pages.append((page, console))
        return page

    yield make
    if request.node.stash.get(FAILED, False):
        for number, (page, console) in enumerate(pages, start=1):
            state = "closed"
            if not page.is_closed():
                node = page.query_selector("#conn-state")  # the demo page's indicator
                state = node.get_attribute("data-state") if node else "no indicator"
            print(f"--- page {number} ({page.url}, connection {state}) console:")
            print("\n".join(console) or "(empty)")
    for context in contexts:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
