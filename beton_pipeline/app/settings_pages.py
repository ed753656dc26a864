"""Settings and destinations: beton.yaml's settings read and changed (validated, never secrets), and the Attio fields beton writes matched to the workspace's attributes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from beton_pipeline.app.web import WarehouseJSON

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
