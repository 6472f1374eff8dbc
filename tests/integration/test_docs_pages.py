"""/docs and /redoc load everything from the app itself: no CDN, no web fonts."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

REFERENCE = re.compile(r"""(?:src|href)="([^"]+)"|url: '([^']+)'""")
KINDS = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_only_the_apps_own_files(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert "http://" not in response.text and "https://" not in response.text
    urls = [a or b for a, b in REFERENCE.findall(response.text)]
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, urls
    assert "/openapi.json" in response.text
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        kind = next(v for k, v in KINDS.items() if url.endswith(k))
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url


def test_docs_pages_follow_the_root_path(settings: Settings) -> None:
    """Behind a proxy that mounts the service under a prefix, the page asks for the files
    under that prefix too."""
    with TestClient(create_app(settings), root_path="/chat") as client:
        page = client.get("/docs").text
    assert "/chat/docs-assets/swagger-ui-bundle.js" in page
    assert "/chat/openapi.json" in page


def test_oauth2_redirect_page_is_served(client: TestClient) -> None:
    assert client.get("/docs/oauth2-redirect").status_code == 200
