"""The runner keeps every child alive: restarts with backoff, never gives up, and /healthz
names the child that is down (the service as `make run` starts it, children killed -9)."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from service.children import restart_delay
from tests.peers import _port_open
from tests.stack import ServiceStack, start_stack


def test_the_restart_delay_doubles_and_is_capped():
    assert [restart_delay(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def _listener(stack: ServiceStack) -> psutil.Process | None:
    for p in psutil.Process(stack.proc.pid).children():
        try:
            if "service.listener_main" in p.cmdline():
                return p
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.mark.slow
def test_a_child_killed_again_and_again_comes_back_and_healthz_says_while_it_is_down(tmp_path):
    stack = start_stack(tmp_path / "svc", broker_url=None,
                        env={"SYNTH_RESTART_BACKOFF_SECONDS": "0.2", "SYNTH_RESTART_BACKOFF_MAX_SECONDS": "1.5"})
    try:
        seen_down = []
        killed: set[int] = set()
        for _ in range(8):  # more deaths than the old runner took before it stopped everything
            deadline = time.monotonic() + 30
            while (p := _listener(stack)) is None or p.pid in killed:
                assert time.monotonic() < deadline, "the listener did not come back"
                time.sleep(0.05)
            p.kill()
            killed.add(p.pid)
            p.wait(5)
            r = httpx.get(stack.url + "/healthz", timeout=5)
            body = r.json()
            if not body["processes"]["children"]["listener"]["up"]:
                seen_down.append((r.status_code, body["processes"]["down"]))
        assert stack.proc.poll() is None, "the runner stopped"
        assert seen_down and all(s == (503, ["listener"]) for s in seen_down), seen_down
        deadline = time.monotonic() + 30
        while not (_port_open(stack.dicom_port) and httpx.get(stack.url + "/healthz", timeout=5).status_code == 200):
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.1)
        children = httpx.get(stack.url + "/healthz", timeout=5).json()["processes"]["children"]
        assert children["listener"]["up"] and children["listener"]["restarts"] == 8
        assert all(c["up"] and c["restarts"] == 0 for n, c in children.items() if n != "listener")
    finally:
        stack.stop()
