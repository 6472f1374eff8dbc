"""The demo page at /, the SDK and assets under /static/, and the protocol's AsyncAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(include_in_schema=False)
