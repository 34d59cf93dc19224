"""Every real file we have, through the listener: each is stored byte for byte or refused
with a stated status; compressed MR in every accepted transfer syntax, sent by storescu,
arrives intact and decodes; nothing crashes the listener."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config, build_context
from pynetdicom.dsutils import split_dataset

from dicom_synth.settings import Settings
from service.listener import Listener
from tests.conftest import MISSING_COLLECTIONS, REALDATA
from tests.test_listener import HOST, PEER_ENV, VERIFICATION, make_series
from tests.test_store import corpus

# Files that are not stored, and the stated reason. Every other file must be stored.
REFUSED = {
    # data problems, answered 0xC000 with an ErrorComment
    "csa_slice_norm.dcm": (0xC000, "no PixelData"),  # nibabel stripped its pixels
    "decimal_rescale.dcm": (0xC000, "StudyInstanceUID"),  # has none
    "bad_sequence.dcm": (0xC000, "StudyInstanceUID"),  # hex digests, not UIDs
    "UN_sequence.dcm": (0xC000, "StudyInstanceUID"),
    "MR_truncated.dcm": (0xC000, "truncated"),
    # refused at negotiation: result 3 = SOP class, 4 = transfer syntax not supported
    "MR_small_bigendian.dcm": ("negotiation", 4),
    "JPEG2000.dcm": ("negotiation", 3),  # Secondary Capture
    "SC_rgb_jpeg_dcmtk.dcm": ("negotiation", 3),
    "image_dfl.dcm": ("negotiation", 3),
    "rtdose_rle.dcm": ("negotiation", 3),
}


def _serve(root: Path) -> Iterator[Listener]:
    settings = Settings(data_dir=root).model_copy(update={"dicom_port": 0, "dicom_host": HOST})
    lst = Listener(settings, lambda c: None)
    lst.start()
    yield lst
    lst.stop()


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """One listener for the corpus (pydicom's MR_small variants share UIDs: each test
    checks its own file right after sending it)."""
    yield from _serve(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def fresh_listener(tmp_path: Path) -> Iterator[Listener]:
    yield from _serve(tmp_path / "data")


def send_raw(port: int, path: Path) -> tuple[str, object]:
    """Send the file's bytes unchanged in its own syntax; ('status', Dataset) or
    ('negotiation', result code)."""
    meta, _ = split_dataset(path)
    sop_class, ts = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    ae = AE(ae_title="CORPUS")
    ae.requested_contexts = [build_context(sop_class, [ts]), build_context(VERIFICATION)]
    assoc = ae.associate(HOST, port, ae_title="SYNTH")
    assert assoc.is_established, "listener refused the association"
    try:
        if not any(c.abstract_syntax == sop_class for c in assoc.accepted_contexts):
            (cx,) = [c for c in assoc.rejected_contexts if c.abstract_syntax == sop_class]
            return "negotiation", cx.result
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            return "status", assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
    finally:
        assoc.release()


def body(path: Path) -> bytes:
    """The data set bytes after the file meta."""
    _, offset = split_dataset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def without_group_lengths(path: Path) -> pydicom.Dataset:
    """The data set minus what DCMTK's storescu rewrites when it sends: (gggg,0000) group
    lengths at any depth, trailing padding (FFFC,FFFC), and an encapsulated PixelData's VR
    (an OW corrected to OB)."""
    ds = pydicom.dcmread(path)
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds["PixelData"].VR = "OB"

    def strip(d: pydicom.Dataset) -> None:
        for elem in list(d):
            if elem.tag.element == 0:
                del d[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    strip(item)

    strip(ds)
    return ds


def test_realdata_present() -> None:
    expected = 23 - 4 * len(MISSING_COLLECTIONS)  # dcm_qa_enh holds 4
    assert len(list(REALDATA.rglob("*.dcm"))) >= expected, f"real DICOM files missing at {REALDATA}"


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_each_file_stored_or_refused_with_status(listener: Listener, path: Path) -> None:
    kind, result = send_raw(listener.port, path)
    expected = REFUSED.get(path.name)
    if kind == "negotiation":
        assert expected == ("negotiation", result), f"refused at negotiation ({result})"
        return
    status = int(result.Status)  # type: ignore[attr-defined]
    if expected is not None:
        code, words = expected
        assert status == code and words in result.ErrorComment  # type: ignore[attr-defined]
        return
    assert status == 0x0000, f"0x{status:04X} {result.get('ErrorComment', '')}"  # type: ignore
    hdr = pydicom.dcmread(path, stop_before_pixels=True)
    stored = (listener.store.series_dir(hdr.StudyInstanceUID, hdr.SeriesInstanceUID)
              / f"{hdr.SOPInstanceUID}.dcm")
    assert body(stored) == body(path)  # byte for byte, no decode, no re-encode
    assert split_dataset(stored)[0].TransferSyntaxUID == hdr.file_meta.TransferSyntaxUID


def test_listener_still_serves_after_the_corpus(listener: Listener) -> None:
    r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(listener.port)], env=PEER_ENV,
                       capture_output=True, timeout=30)
    assert r.returncode == 0


# --- compressed MR by storescu ----------------------------------------------------------


def _encode(src: Path, dst: Path, tool: list[str]) -> Path:
    subprocess.run([*tool, str(src), str(dst)], check=True, capture_output=True, timeout=60)
    return dst


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (compressed file, uncompressed original), made by DCMTK's encoders from
    small MR slices (8-bit for JPEG baseline, 12-bit otherwise)."""
    work = tmp_path_factory.mktemp("compressed")
    out: dict[str, tuple[Path, Path]] = {}
    (src12,) = make_series(work / "src12", 1)
    (src8,) = make_series(work / "src8", 1)
    ds = pydicom.dcmread(src8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (np.arange(64 * 64) % 251).astype(np.uint8).tobytes()
    ds.save_as(src8)
    ds = pydicom.dcmread(src12)
    ds.PixelData = (np.arange(64 * 64) % 4001).astype(np.uint16).tobytes()
    ds.save_as(src12)
    recipes = {
        "jpeg-baseline": (src8, ["dcmcjpeg", "+eb"]),
        "jpeg-extended": (src12, ["dcmcjpeg", "+ee"]),
        "jpeg-lossless-p14": (src12, ["dcmcjpeg", "+el"]),
        "jpeg-lossless-sv1": (src12, ["dcmcjpeg", "+e1"]),
        "jpeg-ls-lossless": (src12, ["dcmcjpls", "+el"]),
        "jpeg-ls-near": (src12, ["dcmcjpls", "+en"]),
        "rle": (src12, ["dcmcrle"]),
        "deflated": (src12, ["dcmconv", "+td"]),
        "implicit": (src12, ["dcmconv", "+ti"]),
    }
    for name, (src, tool) in recipes.items():
        # each variant its own SOP instance so the store keeps them apart
        variant = work / f"{name}-src.dcm"
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(variant)
        out[name] = (_encode(variant, work / f"{name}.dcm", tool), variant)
    for name in ("MR_small_jp2klossless.dcm", "693_J2KI.dcm"):  # no J2K encoder in DCMTK
        p = Path(get_testdata_file(name, download=False))
        out[name] = (p, p)
    return out


EXPECTED_SYNTAX = {
    "jpeg-baseline": "1.2.840.10008.1.2.4.50", "jpeg-extended": "1.2.840.10008.1.2.4.51",
    "jpeg-lossless-p14": "1.2.840.10008.1.2.4.57", "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",
    "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80", "jpeg-ls-near": "1.2.840.10008.1.2.4.81",
    "rle": "1.2.840.10008.1.2.5", "deflated": "1.2.840.10008.1.2.1.99",
    "implicit": "1.2.840.10008.1.2",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90", "693_J2KI.dcm": "1.2.840.10008.1.2.4.91",
}
LOSSLESS = {"jpeg-lossless-p14", "jpeg-lossless-sv1", "jpeg-ls-lossless", "rle", "deflated",
            "implicit"}


def storescu_config(syntaxes: list[str]) -> str:
    """A DCMTK storescu config: profile `Every`, one context per (MR or CT, syntax)."""
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    n = 0
    for sop in ("MRImageStorage", "CTImageStorage"):
        for i in range(len(syntaxes)):
            n += 1
            lines.append(f"PresentationContext{n} = {sop}\\TS{i}")
    lines += ["[[Profiles]]", "[Every]", "PresentationContexts = Contexts"]
    return "\n".join(lines) + "\n"


def test_storescu_compressed_mr_in_every_syntax(fresh_listener: Listener, tmp_path: Path,
                                                compressed: dict[str, tuple[Path, Path]]) -> None:
    listener = fresh_listener
    names = sorted(compressed)
    files = [compressed[n][0] for n in names]
    for n, f in zip(names, files, strict=True):
        assert str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) \
            == EXPECTED_SYNTAX[n], n
    # storescu's -x options cannot propose every syntax (JPEG lossless process 14 has none),
    # so a config profile proposes each syntax in its own context for MR and CT.
    cfg = tmp_path / "storescu.cfg"
    cfg.write_text(storescu_config(sorted(set(EXPECTED_SYNTAX.values()))))
    r = subprocess.run(["storescu", "-xf", str(cfg), "Every", "-aec", "SYNTH", HOST,
                        str(listener.port), *map(str, files)], env=PEER_ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    time.sleep(0.1)
    for n in names:
        sent, original = compressed[n]
        hdr = pydicom.dcmread(sent, stop_before_pixels=True)
        stored = (listener.store.series_dir(hdr.StudyInstanceUID, hdr.SeriesInstanceUID)
                  / f"{hdr.SOPInstanceUID}.dcm")
        assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == EXPECTED_SYNTAX[n], n
        assert without_group_lengths(stored) == without_group_lengths(sent), n
        pixels = pydicom.dcmread(stored).pixel_array  # decodes with the pylibjpeg plugins
        if n in LOSSLESS:
            assert np.array_equal(pixels, pydicom.dcmread(original).pixel_array), n
        else:
            assert pixels.shape == pydicom.dcmread(original).pixel_array.shape, n
