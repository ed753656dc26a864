"""Experiments as a workflow: intake, statuses with a decision log, readouts, and the tracking endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from beton_pipeline.app.web import WarehouseJSON

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
