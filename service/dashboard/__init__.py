"""The operator's dashboard (issue 19): server-rendered pages on the gateway, every asset
served from this package (templates/, static/), nothing from a CDN. The routes are in
service.gateway.routes.dashboard; the logic they show is in the modules here."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
