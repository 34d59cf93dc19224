"""Export to a PACS against real peers: Orthanc (accepting, refusing, absent) and a
pynetdicom SCP that answers chosen statuses, to prove retries resend only what is missing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_context, evt

from dicom_synth.derived import build_derived_series, write_series
from dicom_synth.domain import PacsAddress
from service.export import ExportError, send_files
from tests.peers import LOOPBACK, OrthancPeer, free_port, storescu

from .test_derived import breast_t1, ramp


def synthetic_files(tmp_path: Path, n: int = 3, job: str = "job-x") -> tuple[list[Path], list[Dataset]]:
    src = breast_t1(n)
    out = build_derived_series(
        src, ramp(n, 32), task="dce_phase1", model_sha256="ab" * 32, output_index=0, label="DCE phase 1",
        model_name="dce_phase1", model_version="1.0",
    )
    return write_series(out, tmp_path / job), src


def source_files(tmp_path: Path, src: list[Dataset]) -> list[Path]:
    """The phantom source slices as Part 10 files with pixels (to store into Orthanc)."""
    paths = []
    for i, ds in enumerate(src):
        ds = Dataset(ds)
        for tag in [e.tag for e in ds if e.tag.is_private or e.tag.group == 0x6000]:
            del ds[tag]
        ds.PixelData = (np.full((ds.Rows, ds.Columns), i, np.uint16)).tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / f"src{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class RecordingSCP:
    """A real C-STORE SCP on a free loopback port. `decide(association_no, sop_uid)` picks
    the status of each C-STORE; `received[k]` lists the SOP instance UIDs association k
    carried (0-based), whatever status they got."""

    def __init__(
        self, ae_title: str, decide: Callable[[int, str], int] = lambda a, s: 0x0000, contexts=None
    ):
        self.ae_title = ae_title
        self.decide = decide
        self.received: list[list[str]] = []
        self._assocs: dict[int, int] = {}
        self._lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title)
        ae.supported_contexts = contexts if contexts is not None else StoragePresentationContexts
        self._server = ae.start_server(
            (LOOPBACK, self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_open)],
        )
        self._ae = ae

    def _on_open(self, event: evt.Event) -> None:
        with self._lock:
            self._assocs[id(event.assoc)] = len(self.received)
            self.received.append([])

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            k = self._assocs[id(event.assoc)]
            self.received[k].append(uid)
        return self.decide(k, uid)

    def count(self) -> int:
        with self._lock:
            return sum(len(r) for r in self.received)

    def stop(self) -> None:
        self._server.shutdown()
        self._ae.shutdown()


@pytest.fixture
def scp_factory() -> Iterator[Callable[..., RecordingSCP]]:
    started: list[RecordingSCP] = []

    def make(*args, **kwargs) -> RecordingSCP:
        scp = RecordingSCP(*args, **kwargs)
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


def _pacs(peer: OrthancPeer, ae: str | None = None) -> PacsAddress:
    return PacsAddress(ae or peer.aet, LOOPBACK, peer.dicom_port)


# ------------------------------------------------------------------ Orthanc


def test_files_arrive_in_orthanc_identical(orthanc_pacs: OrthancPeer, tmp_path: Path) -> None:
    paths, src = synthetic_files(tmp_path, 3, job="identical")
    result = send_files(paths, _pacs(orthanc_pacs), calling_ae="SYNTH", retries=2, backoff_seconds=0.01)
    assert result.sent == paths and result.attempts == 1 and result.warnings == []

    (series,) = orthanc_pacs.series_in_study(src[0].StudyInstanceUID)
    ids = series["Instances"]
    assert len(ids) == 3
    got = {ds.SOPInstanceUID: ds for ds in (orthanc_pacs.get_dicom(i) for i in ids)}
    for path in paths:
        sent = dcmread(path)
        stored = got[sent.SOPInstanceUID]
        assert stored.SeriesInstanceUID == sent.SeriesInstanceUID
        assert stored.SyntheticData == "YES"
        np.testing.assert_array_equal(stored.pixel_array, sent.pixel_array)
    assert {orthanc_pacs.remote_aet(i) for i in ids} == {"SYNTH"}


def test_each_file_goes_in_its_own_transfer_syntax(orthanc_pacs: OrthancPeer, tmp_path: Path) -> None:
    """Compressed files are proposed and sent as they are, beside uncompressed ones."""
    derived, _ = synthetic_files(tmp_path, 1, job="mixed-ts")
    compressed = [Path(get_testdata_file(n, download=False)) for n in ("MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm")]
    paths = derived + compressed
    result = send_files(paths, _pacs(orthanc_pacs), calling_ae="SYNTH", retries=0, backoff_seconds=0)
    assert result.sent == paths
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        (hit,) = orthanc_pacs.post("/tools/lookup", ds.SOPInstanceUID.encode())
        stored_ts = orthanc_pacs.get(f"/instances/{hit['ID']}/metadata/TransferSyntax", raw=True).decode()
        assert stored_ts == ds.file_meta.TransferSyntaxUID, path.name


def test_resending_is_idempotent(orthanc_pacs: OrthancPeer, tmp_path: Path) -> None:
    paths, src = synthetic_files(tmp_path, 2, job="twice")
    for _ in range(2):
        send_files(paths, _pacs(orthanc_pacs), calling_ae="SYNTH", retries=0, backoff_seconds=0)
    (series,) = orthanc_pacs.series_in_study(src[0].StudyInstanceUID)
    assert len(series["Instances"]) == 2


def test_rejected_association_fails_at_once_with_the_reason(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    pacs = orthanc_factory(check_called_aet=True)
    paths, _ = synthetic_files(tmp_path, 1)
    start = time.monotonic()
    with pytest.raises(ExportError) as err:
        send_files(paths, _pacs(pacs, "NOT_ORTHANC"), calling_ae="SYNTH", retries=3, backoff_seconds=60.0)
    # a retry would first wait the 60 s backoff: far from any scheduling noise on a busy machine
    assert time.monotonic() - start < 30.0, "a permanent rejection must not be retried"
    assert "gave up after" not in err.value.reason
    assert "rejected the association" in err.value.reason
    assert "Called AE title not recognised" in err.value.reason
    assert pacs.instance_count() == 0


def test_orthanc_refusing_our_ae_ends_in_export_error(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    pacs = orthanc_factory(allow_any_store=False, modalities={"OTHER": ("OTHER", LOOPBACK, 104)})
    paths, _ = synthetic_files(tmp_path, 2)
    with pytest.raises(ExportError) as err:
        send_files(paths, _pacs(pacs), calling_ae="STRANGER", retries=1, backoff_seconds=0.01)
    reason = err.value.reason
    assert "gave up after 2 attempt(s)" in reason
    assert "may refuse calling AE 'STRANGER'" in reason and "0 of 2 files acknowledged" in reason
    assert (err.value.acknowledged, err.value.total) == (0, 2)
    assert pacs.instance_count() == 0


def test_dead_pacs_gives_up_after_bounded_retries(tmp_path: Path) -> None:
    paths, _ = synthetic_files(tmp_path, 1)
    dead = PacsAddress("NOBODY", LOOPBACK, free_port())
    start = time.monotonic()
    with pytest.raises(ExportError) as err:
        send_files(paths, dead, calling_ae="SYNTH", retries=3, backoff_seconds=0.05)
    elapsed = time.monotonic() - start
    assert "gave up after 4 attempt(s)" in err.value.reason
    assert f"cannot connect to {dead}" in err.value.reason
    assert 0.05 + 0.1 + 0.2 <= elapsed < 10, elapsed  # backoff doubled, and it stopped


def test_orthanc_forwards_stable_series_but_not_our_results(
    orthanc_factory: Callable[..., OrthancPeer],
    scp_factory: Callable[..., RecordingSCP],
    tmp_path: Path,
) -> None:
    """The fixture's auto-forward that the end-to-end tests rely on: a stable series goes to
    SYNTH once; the series SYNTH stores back stays in Orthanc."""
    synth = scp_factory("SYNTH")
    pacs = orthanc_factory(synth_port=synth.port)
    outputs, src = synthetic_files(tmp_path, 3, job="forward")
    storescu(source_files(tmp_path, src), LOOPBACK, pacs.dicom_port, pacs.aet, calling_ae="MODALITY")
    pacs.wait_for(lambda: synth.count() >= 3, timeout=30)
    assert sorted(synth.received[0]) == sorted(ds.SOPInstanceUID for ds in src)

    send_files(outputs, _pacs(pacs), calling_ae="SYNTH", retries=0, backoff_seconds=0)
    ours = dcmread(outputs[0], stop_before_pixels=True).SeriesInstanceUID

    def ours_stable() -> bool:
        found = [s for s in pacs.series_in_study(src[0].StudyInstanceUID)
                 if s["MainDicomTags"]["SeriesInstanceUID"] == ours]
        return bool(found) and found[0]["IsStable"]

    pacs.wait_for(ours_stable, timeout=30)
    time.sleep(0.5)  # the Lua callback runs on the stable event; give a forward time to start
    assert len(pacs.get("/jobs")) == 1, "our own results were forwarded back"
    assert synth.count() == 3
    assert len(pacs.series_in_study(src[0].StudyInstanceUID)) == 2


# ------------------------------------------------------------------ statuses


def test_partial_acknowledgement_resends_only_the_rest(
    scp_factory: Callable[..., RecordingSCP], tmp_path: Path
) -> None:
    paths, _ = synthetic_files(tmp_path, 4)
    uids = [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    refused_once = {uids[1], uids[3]}
    scp = scp_factory("PACS", lambda k, uid: 0xA700 if k == 0 and uid in refused_once else 0)
    result = send_files(
        paths, PacsAddress("PACS", LOOPBACK, scp.port), calling_ae="SYNTH", retries=3, backoff_seconds=0.01
    )
    assert result.attempts == 2
    assert sorted(result.sent) == sorted(paths)
    assert scp.received[0] == uids
    assert sorted(scp.received[1]) == sorted(refused_once)


def test_persistent_failure_status_is_named(scp_factory: Callable[..., RecordingSCP], tmp_path: Path) -> None:
    paths, _ = synthetic_files(tmp_path, 3)
    bad = dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID
    scp = scp_factory("PACS", lambda k, uid: 0xC123 if uid == bad else 0)
    with pytest.raises(ExportError) as err:
        send_files(paths, PacsAddress("PACS", LOOPBACK, scp.port), calling_ae="SYNTH", retries=2,
                   backoff_seconds=0.01)
    assert "0xC123 cannot understand" in err.value.reason
    assert "2 of 3 files acknowledged" in err.value.reason
    assert [len(r) for r in scp.received] == [3, 1, 1]  # the good ones were not sent again


def test_warning_status_counts_as_stored(scp_factory: Callable[..., RecordingSCP], tmp_path: Path) -> None:
    paths, _ = synthetic_files(tmp_path, 2)
    scp = scp_factory("PACS", lambda k, uid: 0xB000)
    result = send_files(paths, PacsAddress("PACS", LOOPBACK, scp.port), calling_ae="SYNTH", retries=0,
                        backoff_seconds=0)
    assert result.sent == paths and len(result.warnings) == 2 and "0xB000" in result.warnings[0]


def test_pacs_without_our_sop_class_fails_at_once(scp_factory: Callable[..., RecordingSCP], tmp_path: Path) -> None:
    paths, _ = synthetic_files(tmp_path, 1)
    scp = scp_factory("PACS", contexts=[build_context(CTImageStorage)])
    start = time.monotonic()
    with pytest.raises(ExportError, match="accepts none of the proposed.*MR Image Storage"):
        send_files(paths, PacsAddress("PACS", LOOPBACK, scp.port), calling_ae="SYNTH", retries=3, backoff_seconds=2.0)
    assert time.monotonic() - start < 2.0 and scp.count() == 0


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(ExportError, match="cannot read .*junk.dcm"):
        send_files([junk], PacsAddress("PACS", LOOPBACK, free_port()), calling_ae="SYNTH", retries=0,
                   backoff_seconds=0)


def test_redis_fixture_serves_and_stops(redis_factory) -> None:
    """The broker fixture other tests use: a real redis-server that answers, then is gone."""
    peer = redis_factory()
    assert peer.ping() and peer.url.startswith("redis://127.0.0.1:")
    peer.stop()
    assert peer.proc.poll() is not None and not peer.ping()
