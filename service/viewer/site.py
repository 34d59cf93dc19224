"""What the OHIF dist needs to be served: its app-config.js, pointing OHIF's DICOMweb data
source at a DICOMweb root on the page's own origin, and (for a viewer under a path such
as the gateway's /viewer/) the few files whose absolute "/" the build baked in.

OHIF's prebuilt dist is built for the root of a site (PUBLIC_URL "/", the bundler's
public path "/"); OHIF documents a rebuild with PUBLIC_URL for a sub-path. Rather than
rebuild, `write_rebased` writes rebased copies of the files that name it (index.html,
app.bundle.css, the main bundle and the workers' bundles) beside the dist, once, when it
is fetched; a rule that no longer matches where it must raises, so nothing half-works.

    python -m service.viewer.site --dicomweb /dicom-web > docker/viewer/app-config.js
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

DATA_SOURCE = "dicom-synth"
VIEWER_PREFIX = "/viewer/"
"""Where the gateway serves the viewer."""


def app_config(dicomweb_path: str, router_basename: str = "/", friendly_name: str = "dicom-synth") -> str:
    """OHIF's window.config: one DICOMweb data source at <page origin><dicomweb_path>
    (QIDO-RS, WADO-RS metadata and frames, thumbnails from the frames), no other source."""
    source = {
        "friendlyName": friendly_name, "name": DATA_SOURCE,
        "qidoSupportsIncludeField": True, "imageRendering": "wadors", "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
        "staticWado": False, "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
    }
    root = f"window.location.origin + {json.dumps(dicomweb_path)}"
    roots = "".join(f"\n        {key}: {root}," for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"))
    body = "".join(f"\n      {line}" for line in json.dumps(source, indent=2).splitlines()[1:-1])
    return f"""// OHIF viewer configuration written by service.viewer.site (dicom-synth).
window.config = {{
  routerBasename: {json.dumps(router_basename)},
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: {json.dumps(DATA_SOURCE)},
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: {json.dumps(DATA_SOURCE)},
      configuration: {{{roots}{body}
      }},
    }},
  ],
}};
"""


@dataclass(frozen=True)
class Rule:
    files: re.Pattern[str]  # the dist files (path relative to dist) it applies to
    old: re.Pattern[str]
    new: str  # {prefix}: the path the viewer is served under, ending "/"
    required_in: str | None = None  # a file where it must match, else this is not the build it knows


RULES = (
    Rule(re.compile(r"index\.html"), re.compile(r'window\.PUBLIC_URL="/"'), 'window.PUBLIC_URL="{prefix}"',
         "index.html"),
    Rule(re.compile(r"index\.html"), re.compile(r'(href|src)="/(?!/)'), r'\1="{prefix}', "index.html"),
    # the manifest is fetched without credentials unless asked: the page's session cookie then
    Rule(re.compile(r"index\.html"), re.compile(r'<link rel="manifest" '),
         '<link rel="manifest" crossorigin="use-credentials" ', "index.html"),
    Rule(re.compile(r"[^/]+\.css"), re.compile(r"url\(/(?!/)"), "url({prefix}", "app.bundle.css"),
    # the bundler's public path, in the main bundle and in each worker's
    Rule(re.compile(r"[^/]+\.js"), re.compile(r'__webpack_require__\.p = "/";'), '__webpack_require__.p = "{prefix}";',
         "app.bundle.*.js"),
)


def rebase(name: str, text: str, prefix: str) -> tuple[str, set[str]]:
    """`text` of dist file `name` (relative path) as served under `prefix` ("/viewer/"),
    and the patterns of the rules that matched."""
    matched = set()
    for rule in RULES:
        if rule.files.fullmatch(name):
            text, count = rule.old.subn(rule.new.replace("{prefix}", prefix), text)
            if count:
                matched.add(rule.old.pattern)
    return text, matched


def write_rebased(dist: Path, out: Path, prefix: str) -> list[str]:
    """Write into `out` (same layout) each file of `dist` that names the site's root, as
    served under `prefix`; the others are served from `dist` as they are. ValueError when
    a rule does not match where it must (another OHIF build than this was written for)."""
    written: list[str] = []
    matched_in: dict[str, set[str]] = {}
    for path in sorted(dist.rglob("*")):
        name = path.relative_to(dist).as_posix()
        if not path.is_file() or not any(rule.files.fullmatch(name) for rule in RULES):
            continue
        text, matched = rebase(name, path.read_text(encoding="utf-8"), prefix)
        matched_in[name] = matched
        if matched:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(name)
    for rule in RULES:
        where = rule.required_in
        if where and not any(fnmatch.fnmatch(n, where) and rule.old.pattern in m for n, m in matched_in.items()):
            raise ValueError(f"{where}: {rule.old.pattern!r} not found: not the OHIF build this was written for")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="print an OHIF app-config.js for a DICOMweb root")
    parser.add_argument("--dicomweb", required=True, help="the DICOMweb root's path on the viewer's origin")
    parser.add_argument("--basename", default="/", help="the path OHIF is served under")
    parser.add_argument("--name", default="dicom-synth", help="the data source's friendly name")
    args = parser.parse_args(argv)
    print(app_config(args.dicomweb, args.basename, args.name), end="")


if __name__ == "__main__":
    main()
