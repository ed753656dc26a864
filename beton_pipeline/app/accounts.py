"""An account's page: its score history with its top contributions."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from beton_pipeline.app.web import WarehouseJSON

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
