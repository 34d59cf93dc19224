"""Fetch OHIF's prebuilt viewer once: `npm pack @ohif/app@OHIF_VERSION` (npm's own cache
applies), its sha512 checked against the pinned one, and its `dist/` unpacked to
<viewer_dir>/ohif-app-<version>/dist, with the few files that name the site's root
rewritten for /viewer/ beside it in `rebased/` (service.viewer.site). Idempotent: a dist
already unpacked (its marker written last) is used as it is. Nothing is committed; the
gateway never fetches.

    python -m service.viewer.fetch [--dir DIR]     # prints the dist folder
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from service.viewer import site

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==")
"""The registry's `dist.integrity` of @ohif/app@3.13.2: what was pinned is what is served."""
MARKER = ".fetched"
REBASED = "rebased"
NPM_TIMEOUT_SECONDS = 600


class ViewerFetchError(RuntimeError):
    """OHIF could not be fetched (no npm, the registry unreachable, a tarball that differs)."""


def dist_dir(viewer_dir: Path, version: str = OHIF_VERSION) -> Path:
    return Path(viewer_dir) / f"ohif-app-{version}" / "dist"


def installed(viewer_dir: Path) -> Path | None:
    """The unpacked dist, or None when it has not been fetched (whole) yet."""
    dist = dist_dir(viewer_dir)
    return dist if (dist.parent / MARKER).is_file() and (dist / "index.html").is_file() else None


def rebased_dir(dist: Path) -> Path:
    """The dist's files rewritten for the gateway's /viewer/ (each, where it exists, instead of dist's)."""
    return dist.parent / REBASED


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _npm_pack(dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerFetchError("npm not found: install Debian's npm (apt-get install npm) to fetch the OHIF viewer")
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    try:
        r = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", str(dest)], capture_output=True,
                           text=True, timeout=NPM_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ViewerFetchError(f"npm pack {spec} took over {NPM_TIMEOUT_SECONDS} s: is the npm registry reachable?"
                               ) from None
    if r.returncode != 0:
        raise ViewerFetchError(f"npm pack {spec} failed (is the npm registry reachable?): "
                               f"{(r.stderr or r.stdout).strip()[-2000:]}")
    (packed,) = json.loads(r.stdout)
    return dest / packed["filename"]


def _unpack(tarball: Path, into: Path) -> None:
    """The package's dist/ only, with tarfile's `data` filter (no links out, no devices)."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
        if not members:
            raise ViewerFetchError(f"{tarball.name} has no package/dist/")
        tar.extractall(into, members=members, filter="data")


def ensure_dist(viewer_dir: Path) -> Path:
    """The dist folder of the pinned OHIF, fetched and unpacked first if it is not there."""
    found = installed(viewer_dir)
    if found is not None:
        return found
    target = dist_dir(viewer_dir).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ohif-", dir=target.parent) as tmp:
        tarball = _npm_pack(Path(tmp))
        got = _integrity(tarball)
        if got != OHIF_INTEGRITY:
            raise ViewerFetchError(f"{tarball.name}: integrity {got} is not the pinned {OHIF_INTEGRITY}")
        staged = Path(tmp) / "unpacked"
        _unpack(tarball, staged)
        try:
            site.write_rebased(staged / "package" / "dist", staged / "package" / REBASED, site.VIEWER_PREFIX)
        except ValueError as exc:
            raise ViewerFetchError(str(exc)) from exc
        shutil.rmtree(target, ignore_errors=True)  # a half-made one from a run that died
        (staged / "package").rename(target)
        (target / MARKER).write_text(f"{OHIF_PACKAGE}@{OHIF_VERSION} {OHIF_INTEGRITY}\n")
    return dist_dir(viewer_dir)


def main(argv: list[str] | None = None) -> int:
    from dicom_synth.settings import get_settings

    parser = argparse.ArgumentParser(description=f"fetch {OHIF_PACKAGE}@{OHIF_VERSION} (the OHIF viewer) once")
    parser.add_argument("--dir", type=Path, default=None, help="viewer folder (default: SYNTH_VIEWER_DIR)")
    args = parser.parse_args(argv)
    try:
        print(ensure_dist(args.dir or get_settings().viewer_root))
    except ViewerFetchError as exc:
        parser.exit(1, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
