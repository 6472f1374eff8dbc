"""The OpenAPI document tells every error a /api/v1 route answers."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.main import create_app
from tests.support.tokens import SECRET


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
