"""Fixtures shared by the REST test modules: one app per module and backend, fresh users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.support.services import BACKENDS, Users, shared_client


@pytest.fixture(scope="module", params=BACKENDS)
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app on embedded SQLite and on Postgres, shared by the tests of one module."""
    yield from shared_client(request, tmp_path_factory)


@pytest.fixture
def u() -> Users:
    """User ids of this test's own, so tests sharing an app never see each other's data."""
    return Users()
