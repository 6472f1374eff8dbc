"""The scene behind docs/demo.png still plays (tests/browser/demo_screenshot.py makes it)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser import demo_screenshot
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.timeout(180)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_demo_screenshot_scene(
    server_factory: Callable[..., ServerProcess], browser: Browser, tmp_path: Path
) -> None:
    out = tmp_path / "demo.png"
    demo_screenshot.capture(browser, server_factory().base_url, out)
    assert png_size(out) == (1280, 800)


def test_committed_screenshot_is_1280_by_800() -> None:
    committed = demo_screenshot.DEFAULT_OUT
    if not committed.exists():
        pytest.skip(f"{committed} not generated yet (python -m tests.browser.demo_screenshot)")
    assert png_size(committed) == (1280, 800)
