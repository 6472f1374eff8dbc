"""The OpenAPI document tells every error a /api/v1 route answers, and the REST tests' checker
(tests/support/openapi.py) holds the answers to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.errors import error_responses, install_error_handlers
from app.config import Settings
from app.errors import NotFound
from app.main import create_app
from tests.support.openapi import checked_client
from tests.support.tokens import SECRET


class Thing(BaseModel):
    name: str


def toy() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/v1/documented", response_model=Thing, responses=error_responses(404))
    async def documented(missing: bool = False) -> dict[str, str]:
        if missing:
            raise NotFound("no such thing")
        return {"name": "a"}

    @app.get("/api/v1/teapot", response_model=Thing)
    async def teapot() -> JSONResponse:
        return JSONResponse({"detail": "short and stout"}, status_code=418)

    @app.get("/api/v1/off-schema", response_model=Thing)
    async def off_schema() -> JSONResponse:
        return JSONResponse({"label": "a"})

    return app


def test_checker_passes_documented_answers() -> None:
    with checked_client(toy()) as client:
        assert client.get("/api/v1/documented").json() == {"name": "a"}
        missing = client.get("/api/v1/documented", params={"missing": "true"})
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no such thing"}
        assert client.get("/api/v1/documented", params={"missing": "maybe"}).status_code == 422
        hook = client.event_hooks["response"][-1]
        assert hook.checked == 3


def test_checker_refuses_an_undocumented_status() -> None:
    with checked_client(toy()) as client, pytest.raises(AssertionError, match="not document"):
        client.get("/api/v1/teapot")


def test_checker_refuses_a_body_off_its_schema() -> None:
    with checked_client(toy()) as client, pytest.raises(AssertionError, match="does not match"):
        client.get("/api/v1/off-schema")


def test_every_api_operation_documents_its_errors(tmp_path: Path) -> None:
    settings = Settings(SQLITE_PATH=str(tmp_path / "t.db"), JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]
    spec = create_app(settings).openapi()
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, op in item.items()
    ]
    assert len(operations) >= 13
    for path, method, op in operations:
        responses = op["responses"]
        assert {"401", "503"} <= set(responses), (method, path)
        for status, response in responses.items():
            if int(status) < 400:
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            expected = "ValidationErrorOut" if status == "422" else "ErrorOut"
            assert ref == f"#/components/schemas/{expected}", (method, path, status)
            assert response["description"], (method, path, status)
