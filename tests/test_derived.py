"""The synthetic output series: every contract attribute, geometry slice by slice,
deterministic UIDs, nothing leaked from the source, and dciodvfy reports zero errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from dicom_synth.derived import build_derived_series, write_series
from dicom_synth.series import load_series

from .conftest import REALDATA

CREATED = datetime(2024, 5, 6, 7, 8, 9)
# dicom3tools 2022-06 (Debian bookworm) predates SyntheticData (0008,001C) in its data
# dictionary and calls any unknown even-group tag an error. That is the only error allowed.
UNKNOWN_SYNTHETIC_DATA = re.compile(
    r"^Error - Attribute with an even group number is not a recognized standard attribute"
    r" - \(0x0008,0x001c\)"
)


def breast_t1(n: int = 6, size: int = 32) -> list[Dataset]:
    """Headers shaped like a prone, feet-first axial 3D FLASH breast T1 (seed 000), with
    the things a builder must not copy: private tags, an overlay, an icon, a contrast claim."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = "Phantom^Breast", "PH-0001"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", "F", "054Y"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101500", "S1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC42", "Ref^Doc"
        ds.StudyDescription = "MR BREAST BILATERAL"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 5, i + 1
        ds.SeriesDescription = "t1_fl3d_tra_nonfs"
        ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "Prisma"
        ds.InstitutionName = "Test Hospital"
        ds.BodyPartExamined, ds.PatientPosition = "BREAST", "FFP"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant = "GR", ["SP", "SS"]
        ds.ScanOptions, ds.MRAcquisitionType = "", "3D"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "5.43", "2.46", "20"
        ds.EchoTrainLength, ds.MagneticFieldStrength = 1, "3"
        ds.SliceThickness, ds.SpacingBetweenSlices = "1", "1"
        ds.PixelSpacing = ["1", "1"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -16.0, -40.0 + i]
        ds.SliceLocation = -40.0 + i
        ds.PositionReferenceIndicator = ""
        ds.ContrastBolusAgent, ds.ContrastBolusVolume = "Gadobenate", "15"
        ds.add_new(0x00291010, "OB", b"\x01\x02SIEMENS CSA")
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        ds.add_new(0x60000010, "US", size)  # overlay rows
        ds.add_new(0x60003000, "OW", b"\x00" * (size * size // 8))
        icon = Dataset()
        icon.Rows = icon.Columns = 4
        ds.IconImageSequence = DicomSequence([icon])
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        out.append(ds)
    return out


def ramp(n: int, size: int) -> np.ndarray:
    return np.arange(n * size * size, dtype=np.float32).reshape(n, size, size) % 3000


MODEL_SHA256 = "ab" * 32


def build(sources, pixels, **kw) -> list[Dataset]:
    args = dict(
        task="dce_phase1", model_sha256=MODEL_SHA256, output_index=0, label="DCE phase 1",
        model_name="dce_phase1", model_version="1.2.0", created=CREATED,
    )
    args.update(kw)
    return build_derived_series(sources, pixels, **args)


def roundtrip(datasets: list[Dataset], tmp_path: Path) -> list[Dataset]:
    return [dcmread(p) for p in write_series(datasets, tmp_path)]


def code(item: Dataset) -> tuple[str, str, str]:
    return (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


# ------------------------------------------------------------------ contract


def test_every_contract_attribute_survives_round_trip(tmp_path: Path) -> None:
    src = breast_t1()
    out = roundtrip(build(src, ramp(6, 32)), tmp_path)
    assert len(out) == 6
    series_uids = {ds.SeriesInstanceUID for ds in out}
    assert len(series_uids) == 1 and src[0].SeriesInstanceUID not in series_uids
    for i, (ds, s) in enumerate(zip(out, src, strict=True)):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID != s.SOPInstanceUID
        for kw in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate",
                   "PatientSex", "PatientAge", "StudyDate", "StudyTime", "StudyID",
                   "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                   "FrameOfReferenceUID", "PatientPosition", "BodyPartExamined"):
            assert ds[kw].value == s[kw].value, kw
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.SyntheticData == "YES"
        assert ds.SeriesDescription == "SYNTHETIC DCE phase 1"
        assert ds.SeriesNumber == 5 + 1000
        assert ds.InstanceNumber == i + 1
        assert "dce_phase1" in ds.DerivationDescription and "1.2.0" in ds.DerivationDescription
        assert code(ds.DerivationCodeSequence[0]) == ("123110", "DCM", "Artificial Intelligence")
        ref = ds.SourceImageSequence
        assert len(ref) == 1
        assert ref[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert ref[0].ReferencedSOPClassUID == MRImageStorage
        assert "ReferencedFrameNumber" not in ref[0]
        assert code(ref[0].PurposeOfReferenceCodeSequence[0])[0] == "121322"
        (rs,) = ds.ReferencedSeriesSequence
        assert rs.SeriesInstanceUID == s.SeriesInstanceUID
        (ri,) = rs.ReferencedInstanceSequence  # the instances this one references
        assert (ri.ReferencedSOPInstanceUID, ri.ReferencedSOPClassUID) == (s.SOPInstanceUID, MRImageStorage)
        synth, scanner = ds.ContributingEquipmentSequence
        assert code(synth.PurposeOfReferenceCodeSequence[0]) == (
            "109100", "DCM", "Synthesizing Equipment"
        )
        assert synth.Manufacturer == "dicom-synth" and "1.2.0" in synth.SoftwareVersions
        assert scanner.Manufacturer == "SIEMENS"
        assert code(scanner.PurposeOfReferenceCodeSequence[0])[0] == "109101"
        # MR Image module: neutral values, never the source's acquisition
        assert ds.ScanningSequence == "RM" and ds.SequenceVariant == "NONE"
        for kw in ("MRAcquisitionType", "EchoTime", "RepetitionTime", "EchoTrainLength", "ScanOptions"):
            assert kw in ds and ds[kw].value in (None, ""), kw
        assert "FlipAngle" not in ds
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16, 16, 15, 0
        )
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert float(ds.WindowWidth) > 0
        assert ds.ContentDate == "20240506"


def test_no_contrast_private_overlay_or_icon_is_copied(tmp_path: Path) -> None:
    out = roundtrip(build(breast_t1(2), ramp(2, 32)), tmp_path)
    for ds in out:
        assert not [e for e in ds if e.tag.is_private]
        assert not [e for e in ds if e.tag.group == 0x6000]
        assert not [e for e in ds if e.keyword.startswith("ContrastBolus")]
        assert "IconImageSequence" not in ds


def test_geometry_equals_source_slice_by_slice(tmp_path: Path) -> None:
    src = breast_t1(5)
    src.reverse()  # whatever order the caller sorted, output slice i follows source i
    out = roundtrip(build(src, ramp(5, 32)), tmp_path)
    for ds, s in zip(out, src, strict=True):
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert [float(v) for v in ds[kw].value] == [float(v) for v in s[kw].value], kw
        assert float(ds.SliceThickness) == float(s.SliceThickness)
        assert float(ds.SliceLocation) == float(s.SliceLocation)
        assert (ds.Rows, ds.Columns) == (s.Rows, s.Columns)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID


def test_pixels_are_rounded_and_clipped_to_uint16(tmp_path: Path) -> None:
    px = ramp(2, 32)
    px[0, 0, 0], px[0, 0, 1], px[0, 0, 2], px[1, 5, 5] = -7.0, 70000.0, 2.5, 3.49
    out = roundtrip(build(breast_t1(2), px), tmp_path)
    got = np.stack([ds.pixel_array for ds in out])
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, np.clip(np.rint(px), 0, 65535).astype(np.uint16))
    assert got[0, 0, 0] == 0 and got[0, 0, 1] == 65535 and got[1, 5, 5] == 3


def test_uids_derive_from_source_task_target_and_model() -> None:
    src, px = breast_t1(3), ramp(3, 32)

    def uids(sources=src, **kw) -> list[str]:
        out = build(sources, px, **kw)
        return [out[0].SeriesInstanceUID] + [ds.SOPInstanceUID for ds in out]

    first = uids()
    # the same series again (another job, another time, other pixels): the same UIDs
    assert uids(created=datetime(2030, 1, 1), output_index=3) == first
    assert uids(sources=[Dataset(s) for s in src]) == first
    changed = [Dataset(s) for s in src]
    changed[1].SOPInstanceUID = generate_uid()
    for other in (uids(task="other_task"), uids(label="T2"), uids(model_sha256="cd" * 32),
                  uids(sources=changed)):
        assert not set(first) & set(other)
    assert len(set(first)) == 4
    for uid in first:
        assert len(uid) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid)


def test_series_number_given_or_offset_by_output_index() -> None:
    src, px = breast_t1(1), ramp(1, 32)
    assert build(src, px, output_index=2)[0].SeriesNumber == 5 + 1000 + 2
    assert build(src, px, series_number=77)[0].SeriesNumber == 77


def test_instances_share_no_mutable_elements() -> None:
    out = build(breast_t1(2), ramp(2, 32))
    out[0].ContributingEquipmentSequence[0].Manufacturer = "changed"
    assert out[1].ContributingEquipmentSequence[0].Manufacturer == "dicom-synth"


def test_ct_source_gives_mr_output_with_geometry_but_no_ct_modules(tmp_path: Path) -> None:
    ct = dcmread(get_testdata_file("CT_small.dcm", download=False))
    out = roundtrip(build([ct], ramp(1, 128), label="pseudo-MRI"), tmp_path)
    (ds,) = out
    assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        assert [float(v) for v in ds[kw].value] == [float(v) for v in ct[kw].value]
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert ds.StudyInstanceUID == ct.StudyInstanceUID
    for kw in ("KVP", "XRayTubeCurrent", "ConvolutionKernel", "RescaleIntercept"):
        assert kw not in ds, kw
    assert ds.ScanningSequence == "RM" and ds.SequenceVariant == "NONE"
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == CTImageStorage


def test_ct_output_has_ct_image_module(tmp_path: Path) -> None:
    ct = dcmread(get_testdata_file("CT_small.dcm", download=False))
    (ds,) = roundtrip(build([ct], ramp(1, 128), modality="ct"), tmp_path)
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert "KVP" in ds and ds.KVP in (None, "")  # Type 2, and no exposure is claimed
    for kw in ("XRayTubeCurrent", "ExposureTime", "Exposure", "ConvolutionKernel", "FilterType"):
        assert kw not in ds, kw
    assert float(ds.ReconstructionDiameter) == float(ct.ReconstructionDiameter)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)


def test_enhanced_source_references_its_frames(tmp_path: Path) -> None:
    loaded = load_series([REALDATA / "nibabel" / "philips_mprage.dcm"], pixels=False)
    slices, frames = loaded.slices[:4], loaded.frame_numbers[:4]
    assert all(f is not None for f in frames)
    out = roundtrip(build(slices, ramp(4, 256), source_frame_numbers=frames), tmp_path)
    for ds, s, f in zip(out, slices, frames, strict=True):
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPClassUID == EnhancedMRImageStorage
        assert ref.ReferencedSOPInstanceUID == s.SOPInstanceUID and ref.ReferencedFrameNumber == f
        assert [float(v) for v in ds.ImagePositionPatient] == [
            float(v) for v in s.ImagePositionPatient
        ]
        assert ds.SOPClassUID == MRImageStorage
    for ds, s in zip(out, slices, strict=True):
        ((ri,),) = [r.ReferencedInstanceSequence for r in ds.ReferencedSeriesSequence]
        assert ri.ReferencedSOPInstanceUID == s.SOPInstanceUID


# ------------------------------------------------------------------ validation


def _no_ipp() -> list[Dataset]:
    src = breast_t1(2)
    del src[1].ImagePositionPatient
    return src


def _two_studies() -> list[Dataset]:
    src = breast_t1(2)
    src[1].StudyInstanceUID = generate_uid()
    return src


@pytest.mark.parametrize(
    ("sources", "pixels", "kw", "message"),
    [
        (lambda: [], np.zeros((0, 32, 32)), {}, "no source slices"),
        (lambda: breast_t1(2), np.zeros((3, 32, 32)), {}, "3 slices but 2 source"),
        (lambda: breast_t1(2), np.zeros((2, 64, 32)), {}, "64x32 but source slice 0 is 32x32"),
        (lambda: breast_t1(2), np.zeros((32, 32)), {}, r"\(N, H, W\)"),
        (lambda: breast_t1(1), np.full((1, 32, 32), np.nan), {}, "NaN"),
        (lambda: breast_t1(1), np.zeros((1, 32, 32)), {"modality": "US"}, "modality"),
        (lambda: breast_t1(1), np.zeros((1, 32, 32)), {"label": " "}, "label"),
        (lambda: breast_t1(1), np.zeros((1, 32, 32)), {"task": ""}, "task"),
        (lambda: breast_t1(1), np.zeros((1, 32, 32)), {"model_sha256": "abc"}, "model_sha256"),
        (lambda: breast_t1(1) * 2, np.zeros((2, 32, 32)), {}, "slice 1 repeats instance"),
        (lambda: breast_t1(1), np.zeros((1, 32, 32)), {"output_index": -1}, "output_index"),
        (_no_ipp, np.zeros((2, 32, 32)), {}, "slice 1 has no ImagePositionPatient"),
        (_two_studies, np.zeros((2, 32, 32)), {}, "another study"),
        (lambda: breast_t1(2), np.zeros((2, 32, 32)), {"source_frame_numbers": [1]}, "frame"),
    ],
)
def test_mismatched_inputs_raise_clear_errors(sources, pixels, kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        build(sources(), pixels, **kw)


# ------------------------------------------------------------------ dciodvfy


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is not installed; `make test` installs it")
    res = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error") and not UNKNOWN_SYNTHETIC_DATA.match(ln)]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


def _sources(case: str) -> tuple[list[Dataset], list[int | None]]:
    if case == "phantom breast T1":
        src = breast_t1(3)
        return src, [None] * 3
    files = {
        "MR2_UNCR": REALDATA / "pydicom_data" / "MR2_UNCR.dcm",
        "Siemens VIBE with overlays": REALDATA / "pydicom_data" / "MR-SIEMENS-DICOM-WithOverlays.dcm",
        "Siemens DWI mosaic": REALDATA / "nibabel" / "siemens_dwi_0.dcm",
        "Philips enhanced MR": REALDATA / "nibabel" / "philips_mprage.dcm",
        "enhanced CT": REALDATA / "pydicom_data" / "eCT_Supplemental.dcm",
        "CT_small": Path(get_testdata_file("CT_small.dcm", download=False)),
    }[case]
    loaded = load_series([files], pixels=False)
    return loaded.slices[:2], loaded.frame_numbers[:2]


@pytest.mark.parametrize("modality", ["MR", "CT"])
@pytest.mark.parametrize(
    "case",
    ["phantom breast T1", "MR2_UNCR", "Siemens VIBE with overlays", "Siemens DWI mosaic",
     "Philips enhanced MR", "enhanced CT", "CT_small"],
)
def test_dciodvfy_reports_zero_errors(case: str, modality: str, tmp_path: Path) -> None:
    src, frames = _sources(case)
    rows, cols = int(src[0].Rows), int(src[0].Columns)
    px = ramp(len(src), rows) if rows == cols else np.ones((len(src), rows, cols), np.float32)
    out = build(src, px, modality=modality, source_frame_numbers=frames)
    path = write_series(out[:1], tmp_path)[0]
    errors, warnings = _dciodvfy(path)
    assert errors == [], "\n".join(errors + warnings)
    # Ours must be a clean MR/CT Image: the warnings left concern copied source values,
    # Laterality left empty (unknown), and ImageType value 4 SYNTHETIC on CT.
    ours = [w for w in warnings if "Image Type" in w and modality == "MR"]
    assert ours == []


def test_write_series_writes_part10_files_atomically(tmp_path: Path) -> None:
    out = build(breast_t1(2), ramp(2, 32))
    paths = write_series(out, tmp_path / "deep" / "dir")
    assert [p.name for p in paths] == [f"{ds.SOPInstanceUID}.dcm" for ds in out]
    assert sorted(p.name for p in (tmp_path / "deep" / "dir").iterdir()) == sorted(
        p.name for p in paths
    )
    for p in paths:
        raw = p.read_bytes()
        assert raw[128:132] == b"DICM"


def test_file_meta_is_set_on_every_instance() -> None:
    for ds in build(breast_t1(2), ramp(2, 32)):
        assert isinstance(ds.file_meta, FileMetaDataset)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# ------------------------------------------------------------------ headers that do not lie

# The source's acquisition: none may reach a synthetic instance with a value.
ACQUISITION_KEYWORDS = (
    "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "ScanningSequence",
    "SequenceVariant", "SequenceName", "ScanOptions", "EchoTrainLength", "MRAcquisitionType",
    "NumberOfAverages", "ImagingFrequency", "MagneticFieldStrength", "EchoNumbers",
    "NumberOfPhaseEncodingSteps", "PercentSampling", "PercentPhaseFieldOfView", "PixelBandwidth",
    "AcquisitionMatrix", "InPlanePhaseEncodingDirection", "VariableFlipAngleFlag", "SAR", "dBdt",
    "ReceiveCoilName", "TransmitCoilName", "AngioFlag", "TriggerTime", "DiffusionBValue",
    # enhanced MR
    "PulseSequenceName", "EchoPulseSequence", "InversionRecovery", "EffectiveEchoTime",
    "MultipleSpinEcho", "PhaseContrast", "SteadyStatePulseSequence", "EchoPlanarPulseSequence",
    "SpectrallySelectedSuppression", "MRTimingAndRelatedParametersSequence", "MREchoSequence",
    "MRModifierSequence", "MRImagingModifierSequence", "MRFOVGeometrySequence",
    "MRReceiveCoilSequence", "MRTransmitCoilSequence", "MRAveragesSequence", "MRDiffusionSequence",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "InversionTimes",
    # CT exposure
    "KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "ConvolutionKernel", "FilterType",
    "CTDIvol", "GeneratorPower", "FocalSpots", "DataCollectionDiameter",
)
NEUTRAL = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}


def claimed_acquisition(ds: Dataset) -> dict[str, object]:
    """The acquisition attributes `ds` claims: present with a value other than the neutral one."""
    out = {}
    for kw in ACQUISITION_KEYWORDS:
        if kw in ds and ds[kw].value not in (None, "", []) and ds[kw].value != NEUTRAL.get(kw):
            out[kw] = ds[kw].value
    out.update({e.keyword: e.value for e in ds if e.keyword.startswith("ContrastBolus")})
    return out


def brain_flair(n: int = 3, size: int = 32) -> list[Dataset]:
    """An axial 2D TIRM FLAIR: IR with TR 9000, TE 100, TI 2500, and the enhanced-MR
    attributes a vendor may also put on a classic instance."""
    out = breast_t1(n, size)
    for ds in out:
        ds.StudyDescription, ds.SeriesDescription = "MR BRAIN", "t2_tirm_tra_dark-fluid"
        ds.BodyPartExamined, ds.PatientPosition = "HEAD", "HFS"
        ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK", "SP", "MP"]
        ds.ScanOptions, ds.MRAcquisitionType = ["IR", "PFP"], "2D"
        ds.SequenceName, ds.EchoTrainLength = "*tir2d1_16", 16
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.FlipAngle = "9000", "100", "2500", "150"
        ds.NumberOfAverages, ds.ImagingFrequency, ds.PixelBandwidth = "1", "123.2", "287"
        ds.AcquisitionMatrix, ds.InPlanePhaseEncodingDirection = [0, 256, 205, 0], "ROW"
        ds.PulseSequenceName, ds.InversionRecovery, ds.EchoPulseSequence = "tir2d1", "YES", "SPIN"
        ds.EffectiveEchoTime = 100.0
        timing = Dataset()
        timing.RepetitionTime, timing.FlipAngle = 9000.0, 150.0
        ds.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    return out


def test_synthetic_t1_from_flair_claims_none_of_its_acquisition(tmp_path: Path) -> None:
    src = brain_flair()
    assert {"RepetitionTime", "InversionTime", "ScanningSequence", "PulseSequenceName"} <= set(
        claimed_acquisition(src[0]))
    out = build(src, ramp(3, 32), task="brain_contrasts", label="T1 from FLAIR",
                model_name="brain_contrasts", model_version="2.0.1")
    paths = write_series(out, tmp_path)
    for ds in (dcmread(p) for p in paths):
        assert claimed_acquisition(ds) == {}
        assert ds.ScanningSequence == "RM" and ds.SequenceVariant == "NONE"
        for kw in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"):
            assert kw in ds and ds[kw].value in (None, ""), kw  # Type 2: present, empty
        assert "InversionTime" not in ds  # only required for IR
        assert ds.SeriesDescription == "SYNTHETIC T1 from FLAIR"
        text = ds.DerivationDescription
        for part in ("SYNTHETIC T1 from FLAIR", "brain_contrasts", "2.0.1", MODEL_SHA256[:12],
                     src[0].SeriesInstanceUID, "Not an acquired image"):
            assert part in text, part
        assert "FrameOfReferenceUID" not in text  # the source has one: kept, nothing to say
        assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID
        assert code(ds.DerivationCodeSequence[0]) == ("123110", "DCM", "Artificial Intelligence")
    errors, warnings = _dciodvfy(paths[0])
    assert errors == [], "\n".join(errors + warnings)


def test_description_is_cut_to_64_characters_and_keeps_synthetic() -> None:
    (ds,) = build(breast_t1(1), ramp(1, 32), label="T1 " + "x" * 100)
    assert ds.SeriesDescription.startswith("SYNTHETIC T1 ") and len(ds.SeriesDescription) == 64
    assert len(ds.DerivationDescription) <= 1024


def test_notes_are_appended_to_every_image_comment() -> None:
    notes = ["domain guard: warn (score 0.91 > 0.80): sagittal; trained on axial", "second note"]
    out = build(breast_t1(2), ramp(2, 32), notes=notes)
    for ds in out:
        assert ds.ImageComments.startswith("SYNTHETIC image from model dce_phase1 1.2.0; not acquired")
        assert ds.ImageComments.endswith("; " + "; ".join(notes))
    (long,) = build(breast_t1(1), ramp(1, 32), notes=["x" * 20000])
    assert len(long.ImageComments) == 10240 and long.ImageComments.startswith("SYNTHETIC")
    (plain,) = build(breast_t1(1), ramp(1, 32))
    assert plain.ImageComments == "SYNTHETIC image from model dce_phase1 1.2.0; not acquired"


def test_ct_without_frame_of_reference_gets_a_new_one_and_says_so(tmp_path: Path) -> None:
    ct = dcmread(get_testdata_file("CT_small.dcm", download=False))
    del ct.FrameOfReferenceUID
    outputs = {}
    for label, modality in (("pseudo-MRI", "MR"), ("other", "MR"), ("pseudo-MRI", "CT")):
        (ds,) = build([ct], ramp(1, 128), task="pseudo_mri", label=label, modality=modality)
        outputs[(label, modality)] = ds
        path = write_series([ds], tmp_path / f"{label}-{modality}")[0]
        errors, warnings = _dciodvfy(path)
        assert errors == [], "\n".join(errors + warnings)
    uids = {ds.FrameOfReferenceUID for ds in outputs.values()}
    assert len(uids) == 1  # one new frame per source series: its outputs stay linked
    (uid,) = uids
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) and len(uid) <= 64
    assert build([ct], ramp(1, 128), task="pseudo_mri", label="pseudo-MRI")[0].FrameOfReferenceUID == uid
    other = Dataset(ct)
    other.SeriesInstanceUID = generate_uid()
    assert build([other], ramp(1, 128), label="pseudo-MRI")[0].FrameOfReferenceUID != uid
    for ds in outputs.values():
        assert "no FrameOfReferenceUID" in ds.DerivationDescription and uid in ds.DerivationDescription


# ------------------------------------------------------------------ re-sending does not duplicate


def _uids(datasets: list[Dataset]) -> tuple[str, list[str]]:
    return str(datasets[0].SeriesInstanceUID), [str(ds.SOPInstanceUID) for ds in datasets]


def test_a_series_sent_twice_gives_the_same_uids_and_a_changed_one_new_uids(tmp_path: Path) -> None:
    files = [REALDATA / "nibabel" / "philips_mprage.dcm"]
    first, second = (load_series(files, pixels=False) for _ in range(2))  # read twice, as received twice
    assert first.slices[0] is not second.slices[0]

    def run(loaded, n: int = 6, **kw) -> tuple[str, list[str]]:
        kw = {"task": "brain_contrasts", "label": "T2", "source_frame_numbers": loaded.frame_numbers[:n],
              "created": datetime.now(), **kw}
        return _uids(build(loaded.slices[:n], ramp(n, 256), **kw))

    series, instances = run(first)
    assert run(second) == (series, instances)
    assert len(set(instances)) == 6 and series not in instances
    assert run(second, output_index=2)[0] == series  # the output's position is not its identity
    new_model = run(second, model_sha256="0f" * 32)
    fewer_frames = run(second, n=5)
    other_target = run(second, label="FLAIR")
    other_task = run(second, task="brain_contrasts_v2")
    for other in (new_model, fewer_frames, other_target, other_task):
        assert other[0] != series and not set(other[1]) & set(instances)
    # a source instance replaced (new SOP Instance UID): the whole series is new
    changed = [Dataset(s) for s in breast_t1(3)]
    before = _uids(build(changed, ramp(3, 32)))
    changed[2].SOPInstanceUID = generate_uid()
    after = _uids(build(changed, ramp(3, 32)))
    assert after[0] != before[0] and not set(after[1]) & set(before[1])
