"""What the fault tests (tests/test_faults_*.py) share: waiting for every job to end, the
check that the PACS holds exactly one whole synthetic series per source series, and the
fault-table line each prints (run with -s to see it; also appended to
var/test-artefacts/fault-table.jsonl)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydicom import dcmread

from tests.peers import OrthancPeer, wait_until  # noqa: F401 (the fault tests import it from here)
from tests.stack import ServiceStack

FINAL = ("done", "failed", "skipped")
TABLE = Path(__file__).resolve().parents[1] / "var" / "test-artefacts" / "fault-table.jsonl"


def all_final(stack: ServiceStack, expected: int, timeout: float = 300) -> list[dict]:
    """Wait until the stack has `expected` jobs, every one in a final state; returns them."""
    def final():
        jobs = stack.jobs()
        return jobs if len(jobs) >= expected and all(j["status"] in FINAL for j in jobs) else None

    return wait_until(final, timeout, f"{expected} jobs in a final state")


def one_synthetic_series_each(orthanc: OrthancPeer, sources: list[list[Path]]) -> tuple[int, int]:
    """Assert the PACS holds, in each source series' study, exactly one series, as many
    instances as the source has (the PACS got only our outputs); returns (instances lost,
    instances duplicated) over all, which the assertion needs to be (0, 0)."""
    lost = duplicated = 0
    problems = []
    for files in sources:
        study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        series = orthanc.series_in_study(study)
        counts = Counter(len(orthanc.instances(s["ID"])) for s in series)
        got = sum(n * k for n, k in counts.items())
        lost += max(0, len(files) - got)
        duplicated += max(0, got - len(files))
        if len(series) != 1 or got != len(files):
            problems.append(f"study {study}: {len(series)} series, {got} instances for a {len(files)}-slice source")
    assert not problems, problems
    return lost, duplicated


def record(fault: str, cause: str, jobs: list[dict], lost: int, duplicated: int, recovery_s: float) -> None:
    """One row of the fault table: printed, and appended to TABLE."""
    states = dict(Counter(j["status"] for j in jobs))
    row = {"fault": fault, "cause": cause, "final_states": states, "lost": lost, "duplicated": duplicated,
           "recovery_s": round(recovery_s, 1)}
    print(f"\nFAULT-TABLE | {fault} | {cause} | {states} | lost {lost} dup {duplicated} | {recovery_s:.1f} s")
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    with TABLE.open("a") as f:
        f.write(json.dumps(row) + "\n")


def c_store_statuses(port: int, files: list[Path], *, called_ae: str = "SYNTH") -> list[int]:
    """Send `files` on one association (pynetdicom, each in its own transfer syntax);
    the C-STORE status of each."""
    from pynetdicom import AE

    ae = AE(ae_title="FAULTSCU")
    for context in {(m.MediaStorageSOPClassUID, m.TransferSyntaxUID)
                    for m in (dcmread(f, stop_before_pixels=True).file_meta for f in files)}:
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def children(stack: ServiceStack) -> dict:
    """The runner's children as /healthz reports them (name -> up, restarts, ...)."""
    with stack.client() as c:
        return c.get("/healthz").json()["processes"]["children"]
