"""The OHIF viewer at /viewer/, same-origin with the DICOMweb it reads (/dicomweb): the
files of the fetched dist (service.viewer.fetch), the few that name "/" rebased onto
/viewer/, and an app-config.js made here (service.viewer.site). A browser logs in once
at the dashboard's form; its session cookie then stands for the token on /viewer/ and on
DICOMweb's GET requests (service.gateway.auth), so no token is written into a page."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response

from service.gateway.auth import requires
from service.gateway.deps import SettingsDep
from service.viewer import fetch, site

PREFIX = site.VIEWER_PREFIX
router = APIRouter(include_in_schema=False)
READ = [requires("read")]
# Cornerstone's volume loading uses SharedArrayBuffer, which needs a cross-origin-isolated page.
ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
NO_CACHE = {**ISOLATED, "Cache-Control": "no-cache"}


def _dist(settings) -> Path:
    dist = fetch.installed(settings.viewer_root)
    if dist is None:
        raise HTTPException(404, f"the OHIF viewer is not installed in {settings.viewer_root}: "
                                 "run `make viewer` (python -m service.viewer.fetch)")
    return dist


def _file(dist: Path, path: str) -> Path:
    """The file at `path` (its copy rebased onto /viewer/ where there is one); index.html
    for the viewer's own routes (no file extension)."""
    if "." not in path.rsplit("/", 1)[-1]:
        path = "index.html"
    for folder in (fetch.rebased_dir(dist), dist):
        candidate = (folder / path).resolve()
        if candidate.is_relative_to(folder.resolve()) and candidate.is_file():
            return candidate
    raise HTTPException(404, f"no {path} in the viewer")


@router.get("/viewer", dependencies=READ)
def viewer_root() -> Response:
    return RedirectResponse(PREFIX, status_code=307)


@router.get(PREFIX + "app-config.js", dependencies=READ)
def app_config(settings: SettingsDep) -> Response:
    _dist(settings)
    return Response(site.app_config("/dicomweb", PREFIX.rstrip("/")), media_type="text/javascript", headers=NO_CACHE)


@router.get(PREFIX + "{path:path}", dependencies=READ)
def viewer_file(path: str, settings: SettingsDep) -> Response:
    found = _file(_dist(settings), path)
    hashed = re.search(r"\.[0-9a-f]{16,}\.", found.name) is not None  # a new build has new names
    cache = "private, max-age=86400" if hashed else "no-cache"
    return FileResponse(found, headers={**ISOLATED, "Cache-Control": cache})
