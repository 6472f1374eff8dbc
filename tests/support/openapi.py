"""Every /api/v1 answer the REST tests get, checked against the app's own OpenAPI document:
its status must be documented for the operation, and its JSON body must match the schema
documented for that status."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jsonschema
from fastapi import FastAPI
from fastapi.testclient import TestClient


class Conformance:
    """An httpx response hook (`client.event_hooks["response"]`) for one app."""

    def __init__(self, app: FastAPI, prefix: str = "/api/v1") -> None:
        self.spec = app.openapi()
        self.prefix = prefix
        # Each documented path as a pattern, the most literal first (`/read-all` before
        # `/{notification_id}/read` would matter if both could match).
        self.paths = sorted(
            (
                (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
                for t in self.spec["paths"]
            ),
            key=lambda item: item[1].count("{"),
        )
        self.checked = 0

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template in self.paths:
            if pattern.match(path):
                op = self.spec["paths"][template].get(method.lower())
                if op is not None:
                    return template, op
        return None

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if not request.url.path.startswith(self.prefix):
            return
        found = self.operation(request.method, request.url.path)
        if found is None:  # 404/405 from routing itself: no operation to hold it to
            return
        template, op = found
        status = str(response.status_code)
        documented = op["responses"]
        assert status in documented, (
            f"{request.method} {template} answered {status}, which its OpenAPI operation does "
            f"not document ({sorted(documented)}): {response.read()[:200]!r}"
        )
        schema = documented[status].get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return
        body = response.read()
        root = {**schema, "components": self.spec.get("components", {})}
        try:
            jsonschema.validate(
                httpx.Response(200, content=body).json(),
                root,
                cls=jsonschema.Draft202012Validator,
            )
        except jsonschema.ValidationError as exc:
            raise AssertionError(
                f"{request.method} {template} {status}: the body does not match the documented "
                f"schema: {exc.message}; body {body[:200]!r}"
            ) from None
        self.checked += 1


@contextmanager
def checked_client(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient of `app` whose every /api/v1 answer is held to the OpenAPI document."""
    with TestClient(app) as client:
        client.event_hooks["response"].append(Conformance(app))
        yield client
