"""What the demo page needs from the server: /, its assets, and the dev login (dev mode only).

No browser involved: these run wherever the rest of the suite does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.security import decode_token
from tests.support.tokens import SECRET

DEV_TOKEN = "/api/v1/dev/token"


@pytest.fixture
def production_client() -> Iterator[TestClient]:
    """Not dev mode: a Postgres URL (never connected to by these requests), no DEV_MODE."""
    settings = Settings(
        DATABASE_URL="postgresql+asyncpg://nobody:none@127.0.0.1:9/none",
        JWT_SECRET=SECRET,
        _env_file=None,
    )
    assert not settings.is_dev
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_index_is_the_demo_page_with_the_dev_login(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<meta name="campushub-dev-login" content="true">' in response.text
    assert '<script type="module" src="/static/app.js">' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    for asset in ("/static/app.js", "/static/app.css", "/static/sdk/campushub.js"):
        assert client.get(asset).status_code == 200, asset


def test_dev_token_mints_a_user_token(client: TestClient, settings: Settings) -> None:
    response = client.post(DEV_TOKEN, json={"user_id": "alice", "name": "Alice Chen"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "user_id", "name", "expires_at"}
    claims = decode_token(body["token"], secret=SECRET, algorithm=settings.JWT_ALGORITHM)
    assert (claims.user_id, claims.name, claims.role) == ("alice", "Alice Chen", None)
    assert abs(claims.expires_at - (time.time() + settings.JWT_DEV_TTL)) < 60
    assert abs(body["expires_at"] - claims.expires_at * 1000) < 60_000
    groups = client.get("/api/v1/groups", headers={"Authorization": f"Bearer {body['token']}"})
    assert groups.status_code == 200

    unnamed = client.post(DEV_TOKEN, json={"user_id": " bob "}).json()
    assert unnamed["user_id"] == "bob" and unnamed["name"] == "bob"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": ""},
        {"user_id": "   "},
        {"user_id": "x" * 65},
        {"user_id": 7},
        {"user_id": "alice", "role": "service"},  # no service tokens from the dev login
        {"user_id": "alice", "name": "n" * 101},
    ],
)
def test_dev_token_rejects_bad_input(client: TestClient, body: dict[str, object]) -> None:
    assert client.post(DEV_TOKEN, json=body).status_code == 422


def test_dev_token_is_never_in_the_openapi_schema(
    client: TestClient, production_client: TestClient
) -> None:
    for test_client in (client, production_client):
        paths = test_client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if "/dev/" in p]
        assert "/" not in paths and "/asyncapi.json" not in paths


def test_dev_token_does_not_exist_outside_dev_mode(production_client: TestClient) -> None:
    for method in ("POST", "GET", "PUT"):
        response = production_client.request(method, DEV_TOKEN, json={"user_id": "alice"})
        assert response.status_code == 404, (method, response.text)
    page = production_client.get("/")
    assert page.status_code == 200
    assert '<meta name="campushub-dev-login" content="false">' in page.text
    assert production_client.get("/asyncapi.json").status_code == 200
