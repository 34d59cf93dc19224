"""The test peers' environment: DCMTK's tools, never pynetdicom's look-alikes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.peers import PEER_ENV, path_without_virtualenvs


def test_virtualenv_bins_are_dropped_from_the_peers_path(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    plain = tmp_path / "tools"
    plain.mkdir()
    path = os.pathsep.join([str(venv / "bin"), str(plain), "/usr/bin"])
    assert path_without_virtualenvs(path) == os.pathsep.join([str(plain), "/usr/bin"])


def test_storescu_is_dcmtks_even_with_this_virtualenv_first_on_path() -> None:
    venv_bin = str(Path(sys.executable).parent)  # pynetdicom puts a `storescu` here
    env = {**PEER_ENV, "PATH": path_without_virtualenvs(os.pathsep.join([venv_bin, os.environ["PATH"]]))}
    tool = shutil.which("storescu", path=env["PATH"])
    assert tool is not None and Path(tool).parent != Path(venv_bin)
    r = subprocess.run([tool, "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert "dcmtk" in (r.stdout + r.stderr).lower()
