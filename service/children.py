"""The runner's children: each restarted with backoff when it dies, never giving up, and
their state written to `<data_dir>/children-<node>.json` for /healthz to report (one file
per node: the runners of several nodes may share one data dir)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dicom_synth.runner")

STABLE_SECONDS = 60.0  # a child up this long has recovered: its backoff starts again from the first delay


def status_file(data_dir: Path, node: str) -> Path:
    """Where the runner of `node` writes its children's state."""
    return data_dir / f"children-{node}.json"


def restart_delay(deaths_in_a_row: int, first: float, longest: float) -> float:
    """Seconds to wait before restarting a child that died `deaths_in_a_row` times (≥ 1)
    without staying up STABLE_SECONDS in between: `first`, doubling, at most `longest`."""
    return min(longest, first * 2 ** max(0, deaths_in_a_row - 1))


@dataclass
class Child:
    name: str
    command: Sequence[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    restarts: int = 0
    last_exit: int | None = None
    restart_at: float | None = None  # when a dead child is started again

    def start(self) -> None:
        self.proc = subprocess.Popen(list(self.command), env=self.env, start_new_session=True)
        self.started_at, self.restart_at = time.monotonic(), None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def public(self, now: float) -> dict:
        return {
            "up": self.up,
            "pid": self.proc.pid if self.up and self.proc else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "restart_in_seconds": round(max(0.0, self.restart_at - now), 2) if self.restart_at else None,
        }


class Supervisor:
    """Starts the children, restarts each that dies after its backoff delay, and keeps
    the status file current."""

    def __init__(self, commands: dict[str, Sequence[str]], env: dict[str, str], data_dir: Path,
                 first_delay: float, longest_delay: float, *, node: str) -> None:
        self.children = {name: Child(name, cmd, env) for name, cmd in commands.items()}
        self.status_path = status_file(data_dir, node)
        self.first, self.longest = first_delay, longest_delay
        self._written: dict | None = None

    def start(self) -> None:
        for child in self.children.values():
            child.start()
        self.write_status()

    def poll(self) -> None:
        """One round: note deaths, restart the children whose delay is over."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    log.warning("restarting %s (restart %d)", child.name, child.restarts + 1)
                    child.restarts += 1
                    child.start()
                continue
            if child.up or child.proc is None:
                continue
            child.last_exit = child.proc.returncode
            child.deaths_in_a_row = 1 if now - child.started_at >= STABLE_SECONDS else child.deaths_in_a_row + 1
            delay = restart_delay(child.deaths_in_a_row, self.first, self.longest)
            child.restart_at = now + delay
            log.warning("%s exited with %s (%d in a row); restarting it in %.1f s",
                        child.name, child.last_exit, child.deaths_in_a_row, delay)
        self.write_status()

    def write_status(self) -> None:
        now = time.monotonic()
        children = {name: child.public(now) for name, child in self.children.items()}
        shape = {n: {k: v for k, v in c.items() if k != "restart_in_seconds"} for n, c in children.items()}
        if shape == self._written:
            return
        self._written = shape
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runner_pid": os.getpid(), "written_at": time.time(), "children": children}))
        os.replace(tmp, self.status_path)

    def remove_status(self) -> None:
        self.status_path.unlink(missing_ok=True)


def read_status(data_dir: Path, node: str | None = None) -> dict | None:
    """The children as this node's running runner last wrote them (`node`: default
    SYNTH_NODE_NAME), or None when no runner runs here (each part started on its own, e.g.
    one container each)."""
    if node is None:
        from dicom_synth.settings import get_settings

        node = get_settings().node_name
    try:
        data = json.loads(status_file(data_dir, node).read_text())
        os.kill(int(data["runner_pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data
