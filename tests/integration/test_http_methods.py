"""A method a path does not serve: 405 with `Allow` naming every method it does serve."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support.tokens import bearer


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # Paths served by two routes: Starlette's own 405 named only the first one's methods.
        ("OPTIONS", "/api/v1/groups", {"GET", "POST"}),
        ("PUT", "/api/v1/groups/g1/messages", {"GET", "POST"}),
        ("DELETE", "/api/v1/notifications", {"GET", "POST"}),
        ("PATCH", "/api/v1/groups/g1/members/bob", {"DELETE"}),
        ("GET", "/api/v1/notifications/read-all", {"POST"}),
        ("POST", "/health", {"GET"}),
    ],
)
def test_405_allow_names_every_method(
    client: TestClient, method: str, path: str, allow: set[str]
) -> None:
    response = client.request(method, path, headers=bearer("alice"))
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == allow
    assert response.json() == {"detail": "Method Not Allowed"}


def test_other_http_errors_keep_their_shape(client: TestClient) -> None:
    missing = client.get("/api/v1/no-such-thing", headers=bearer("alice"))
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    assert "allow" not in missing.headers
