"""Build a synthetic derived image series from source slice headers and model output.

The new instances are written from scratch from a whitelist of source attributes
(patient, study, frame of reference, slice geometry), never by cloning the source:
private tags, overlays, icons, contrast claims, the source's pulse sequence or exposure
and vendor oddities therefore cannot leak into a synthetic image, which states instead
what it is (SeriesDescription, DerivationDescription, DerivationCodeSequence).
Pure: no I/O except `write_series`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from dicom_synth import __version__
from dicom_synth.uids import (
    derived_frame_of_reference_uid,
    derived_instance_uid,
    derived_series_uid,
    source_fingerprint,
)
from dicom_synth.vrclean import clean_element

MANUFACTURER = "dicom-synth"

# Coded concepts (DICOM part 16).
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")  # CID 7005
ACQUISITION_EQUIPMENT = ("109101", "DCM", "Acquisition Equipment")  # CID 7005
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
# CID 7203 (extensible) has no "synthesis" concept; DCM 123110 (CID 7162, checked in
# pydicom 3.0's DCM dictionary) names the method family.
DERIVATION_AI = ("123110", "DCM", "Artificial Intelligence")

_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}

# Same for every slice of a study: copied from the first source.
_PATIENT = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "QualityControlSubject",
)
_STUDY = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "ProcedureCodeSequence", "ReferencedStudySequence",
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight",
    "AdditionalPatientHistory", "EthnicGroup", "Occupation", "SmokingStatus",
    "PregnancyStatus", "LastMenstrualDate",
)
_COMMON = (
    "SpecificCharacterSet", "TimezoneOffsetFromUTC", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "BodyPartExamined", "Laterality", "PatientPosition",
    "AnatomicalOrientationType", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName",
)
# Per slice: the geometry the contract requires, and the slice's timing.
_GEOMETRY = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SliceLocation",
)
_PER_SLICE = ("AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "AcquisitionNumber")
# A synthetic image was never acquired: none of the source's pulse-sequence, contrast or
# exposure attributes is copied (whatever the source modality), so neither a viewer's
# hanging protocol nor a classifier takes it for the source's acquisition. Only geometry
# of the module is copied, when source and output modality agree.
_MR_GEOMETRY = ("SpacingBetweenSlices",)
_CT_GEOMETRY = ("ReconstructionDiameter", "GantryDetectorTilt", "TableHeight")
# Type 1 / Type 2 attributes of the MR and CT Image modules, with neutral values:
# ScanningSequence RM and SequenceVariant NONE (Type 1), the Type 2 ones present but empty.
_MR_NEUTRAL: dict[str, Any] = {
    "ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": None,
    "MRAcquisitionType": None, "RepetitionTime": None, "EchoTime": None, "EchoTrainLength": None,
}
_CT_NEUTRAL: dict[str, Any] = {"KVP": None, "AcquisitionNumber": None}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_LT = 10240  # ImageComments (LT)
_MAX_ST = 1024  # DerivationDescription (ST)


# Body parts that come in pairs: General Series Laterality is required for them.
_PAIRED_PARTS = {
    "BREAST", "EYE", "ORBIT", "EAR", "IAC", "TEMPORALBONE", "TMJ", "PAROTID", "KIDNEY",
    "LUNG", "ADRENAL", "OVARY", "TESTIS", "SHOULDER", "ACJOINT", "CLAVICLE", "SCAPULA",
    "ARM", "HUMERUS", "ELBOW", "FOREARM", "RADIUS", "ULNA", "WRIST", "HAND", "FINGER",
    "THUMB", "HIP", "SIJ", "LEG", "THIGH", "FEMUR", "KNEE", "PATELLA", "TIBIA", "FIBULA",
    "ANKLE", "FOOT", "HEEL", "CALCANEUS", "TOE", "EXTREMITY", "UPRXTREMITY",
    "LOWRXTREMITY", "AXILLA", "CAROTID",
}


def _maybe_paired(ds: Dataset) -> bool:
    """True when the body part is paired or unknown (then Laterality must be present)."""
    part = str(ds.get("BodyPartExamined") or "").strip().upper()
    return not part or part in _PAIRED_PARTS


def _code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _copy(dst: Dataset, src: Dataset, keywords: Sequence[str]) -> None:
    """Copy the keywords `src` has, each value made valid for its VR (see `vrclean`); an
    empty Type 2 value stays empty."""
    for kw in keywords:
        if kw in src:
            dst[kw] = clean_element(src[kw])


def _dicom_dt(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def _fits_ds(value: float) -> str:
    """A decimal string that fits 16 characters."""
    return f"{value:.6g}"


def _validate(
    sources: Sequence[Dataset],
    pixels: np.ndarray,
    frames: Sequence[int | None],
    task: str,
    model_sha256: str,
    output_index: int,
    label: str,
    modality: str,
) -> None:
    if len(sources) == 0:
        raise ValueError("no source slices given")
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3:
        got = getattr(pixels, "shape", type(pixels))
        raise ValueError(f"pixels must be a (N, H, W) array, got {got}")
    if pixels.shape[0] != len(sources):
        raise ValueError(
            f"pixels has {pixels.shape[0]} slices but {len(sources)} source slices were given"
        )
    if len(frames) != len(sources):
        raise ValueError(f"{len(frames)} source frame numbers for {len(sources)} source slices")
    if not np.all(np.isfinite(pixels)):
        raise ValueError("pixels contain NaN or infinite values")
    if not str(task).strip():
        raise ValueError("task must not be empty")
    if not _SHA256.fullmatch(str(model_sha256).lower()):
        raise ValueError(f"model_sha256 must be 64 hex digits, got {model_sha256!r}")
    if output_index < 0:
        raise ValueError(f"output_index must be >= 0, got {output_index}")
    if not label.strip():
        raise ValueError("label must not be empty")
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    study = sources[0].get("StudyInstanceUID")
    if not study:
        raise ValueError("source slice 0 has no StudyInstanceUID")
    h, w = pixels.shape[1:]
    seen: set[tuple[str, int | None]] = set()
    for i, (src, frame) in enumerate(zip(sources, frames, strict=True)):
        key = (str(src.get("SOPInstanceUID")), frame)
        if key in seen:
            raise ValueError(f"source slice {i} repeats instance {key[0]} frame {frame}")
        seen.add(key)
        if src.get("StudyInstanceUID") != study:
            raise ValueError(f"source slice {i} belongs to another study")
        for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", *_GEOMETRY[:3]):
            if not src.get(kw):
                raise ValueError(f"source slice {i} has no {kw}")
        rows, cols = src.get("Rows"), src.get("Columns")
        if rows is not None and cols is not None and (rows, cols) != (h, w):
            raise ValueError(
                f"pixels are {h}x{w} but source slice {i} is {rows}x{cols}: "
                "resample the model output to the source grid first"
            )


def _window(stored: np.ndarray) -> tuple[float, float]:
    """Series-wide window from robust percentiles, so all slices display alike."""
    lo, hi = np.percentile(stored, [0.5, 99.5])
    if hi - lo < 1:
        lo, hi = float(stored.min()), float(stored.max())
    return (float(lo) + float(hi)) / 2.0, max(float(hi) - float(lo), 1.0)


def _series_level(
    first: Dataset,
    *,
    modality: str,
    series_uid: str,
    series_number: int,
    description: str,
    derivation: str,
    comments: str,
    frame_of_reference_uid: str,
    model_name: str,
    model_version: str,
    created: datetime,
) -> Dataset:
    """Attributes shared by every instance of the output series."""
    ds = Dataset()
    _copy(ds, first, _PATIENT)
    _copy(ds, first, _STUDY)
    _copy(ds, first, _COMMON)
    ds.FrameOfReferenceUID = frame_of_reference_uid  # Type 1: the source's, or a new one
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "PositionReferenceIndicator"):
        if kw not in ds:
            setattr(ds, kw, None)  # Type 2: present, may be empty
    if "PatientPosition" not in ds:
        ds.PatientPosition = ""
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
        ds.get("DeidentificationMethod") or ds.get("DeidentificationMethodCodeSequence")
    ):
        # Type 1C: the source says its identity was removed but not how; repeat only that.
        ds.DeidentificationMethod = "not stated by the source"
    if "Laterality" not in ds and _maybe_paired(ds):
        side = first.get("ImageLaterality") or first.get("FrameLaterality")
        # Type 2C: the source's side when it names one, else empty ("unknown").
        ds.Laterality = side if side in ("R", "L") else None
    date, time = _dicom_dt(created)
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SyntheticData = "YES"
    # Value 3 from the modality's defined terms; value 4 says what kind of derivation.
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER" if modality == "MR" else "AXIAL", "SYNTHETIC"]
    ds.DerivationDescription = derivation
    ds.DerivationCodeSequence = DicomSequence([_code_item(DERIVATION_AI)])
    ds.ImageComments = comments
    ds.BurnedInAnnotation = "NO"
    lossy = str(first.get("LossyImageCompression", "00")) == "01"
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        _copy(ds, first, ("LossyImageCompressionRatio", "LossyImageCompressionMethod"))
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = [f"dicom-synth {__version__}"[:64], str(model_version)[:64]]
    ds.ContributingEquipmentSequence = DicomSequence(
        _contributing_equipment(first, model_name, model_version, created)
    )
    ds.ReferencedSeriesSequence = DicomSequence()  # filled by the caller
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    return ds


def _contributing_equipment(
    first: Dataset, model_name: str, model_version: str, created: datetime
) -> list[Dataset]:
    ours = Dataset()
    ours.Manufacturer = MANUFACTURER
    ours.ManufacturerModelName = model_name[:64]
    ours.SoftwareVersions = [f"dicom-synth {__version__}"[:64], str(model_version)[:64]]
    ours.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(SYNTHESIZING_EQUIPMENT)])
    ours.ContributionDateTime = created.strftime("%Y%m%d%H%M%S.%f")
    ours.ContributionDescription = f"synthesized by {model_name} {model_version}"[:64]
    items = [ours]
    if first.get("Manufacturer"):
        scanner = Dataset()
        _copy(scanner, first, ("Manufacturer", "InstitutionName", "StationName",
                               "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions"))
        scanner.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(ACQUISITION_EQUIPMENT)])
        items.append(scanner)
    return items


def _referenced_series(sources: Sequence[Dataset]) -> DicomSequence:
    """Common Instance Reference items for `sources`, grouped by series."""
    by_series: dict[str, dict[str, str]] = {}
    for src in sources:
        by_series.setdefault(str(src.SeriesInstanceUID), {})[str(src.SOPInstanceUID)] = str(
            src.SOPClassUID
        )
    items = []
    for series_uid, instances in by_series.items():
        item = Dataset()
        refs = []
        for sop_uid, sop_class in instances.items():
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_uid
            refs.append(ref)
        item.ReferencedInstanceSequence = DicomSequence(refs)
        item.SeriesInstanceUID = series_uid
        items.append(item)
    return DicomSequence(items)


def _source_image(src: Dataset, frame: int | None) -> DicomSequence:
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = int(frame)
    ref.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(SOURCE_FOR_PROCESSING)])
    return DicomSequence([ref])


def _acquisition(ds: Dataset, src: Dataset, modality: str) -> None:
    """The modality module's attributes: its geometry copied when the source is of the same
    modality; the acquisition ones (Type 1 / 2) always at their neutral values."""
    same = str(src.get("Modality", "")) == modality
    geometry, neutral = (_MR_GEOMETRY, _MR_NEUTRAL) if modality == "MR" else (_CT_GEOMETRY, _CT_NEUTRAL)
    if same:
        _copy(ds, src, geometry)
    for kw, value in neutral.items():
        if kw not in ds:
            setattr(ds, kw, value)


def _derivation_description(
    first: Dataset, *, label: str, task: str, model_name: str, model_version: str,
    model_sha256: str, new_frame_of_reference: str | None,
) -> str:
    """What the output is, in words: target, model, version, sha256 prefix, source."""
    source = f"series {first.SeriesInstanceUID}"
    if first.get("SeriesNumber") not in (None, ""):
        source = f"series {first.SeriesNumber} ({first.SeriesInstanceUID})"
    text = (
        f"SYNTHETIC {label}, synthesized (task {task}) by model {model_name} version "
        f"{model_version} sha256 {model_sha256[:12]} (dicom-synth {__version__}) from {source}. "
        "Not an acquired image: no pulse sequence, exposure or contrast agent"
    )
    if new_frame_of_reference:
        text += f". The source has no FrameOfReferenceUID: new frame of reference {new_frame_of_reference}"
    return text[:_MAX_ST]


def _image_comments(model_name: str, model_version: str, notes: Sequence[str]) -> str:
    """The fixed statement, then each note (for example a domain-guard warning)."""
    parts = [f"SYNTHETIC image from model {model_name} {model_version}; not acquired"]
    parts += [str(n).strip() for n in notes if str(n).strip()]
    return "; ".join(parts)[:_MAX_LT]


def build_derived_series(
    sources: Sequence[Dataset],
    pixels: np.ndarray,
    *,
    task: str,
    model_sha256: str,
    output_index: int,
    label: str,
    model_name: str,
    model_version: str,
    modality: str = "MR",
    series_number: int | None = None,
    source_frame_numbers: Sequence[int | None] | None = None,
    created: datetime | None = None,
    notes: Sequence[str] = (),
) -> list[Dataset]:
    """One new instance per source slice, in source order, carrying the contract's
    attributes (see DESIGN.md). `pixels` (N, H, W) are stored values, rounded and clipped
    to uint16. `source_frame_numbers[i]` is the frame of an enhanced multi-frame source
    that slice i came from (None for single-frame sources). The UIDs derive from the
    source instances (and frames), `task`, the target `label` and `model_sha256`: the same
    inputs give the same UIDs. `notes` are appended to every instance's ImageComments.
    Raises ValueError on mismatched inputs, before building anything."""
    modality = str(modality).upper()
    frames: list[int | None] = (
        list(source_frame_numbers) if source_frame_numbers is not None else [None] * len(sources)
    )
    _validate(sources, pixels, frames, task, model_sha256, output_index, label, modality)
    created = created or datetime.now()
    model_sha256 = str(model_sha256).lower()
    stored = np.clip(np.rint(pixels), 0, 65535).astype("<u2")
    first = sources[0]
    if series_number is None:
        series_number = int(first.get("SeriesNumber") or 0) + 1000 + output_index
    label = label.strip()
    description = f"SYNTHETIC {label}"[:64]
    fingerprint = source_fingerprint((str(s.SOPInstanceUID), f) for s, f in zip(sources, frames, strict=True))
    series_uid = derived_series_uid(fingerprint, str(task), label, model_sha256)
    frame_of_reference = str(first.get("FrameOfReferenceUID") or "")
    new_frame_of_reference = None
    if not frame_of_reference:
        frame_of_reference = new_frame_of_reference = derived_frame_of_reference_uid(first.SeriesInstanceUID)
    derivation = _derivation_description(
        first, label=label, task=str(task), model_name=model_name, model_version=model_version,
        model_sha256=model_sha256, new_frame_of_reference=new_frame_of_reference,
    )
    comments = _image_comments(model_name, model_version, notes)
    center, width = _window(stored)
    out = []
    for i, (src, frame) in enumerate(zip(sources, frames, strict=True)):
        # Built afresh per instance (cheaper than deepcopy), so no element is shared.
        ds = _series_level(
            first,
            modality=modality,
            series_uid=series_uid,
            series_number=series_number,
            description=description,
            derivation=derivation,
            comments=comments,
            frame_of_reference_uid=frame_of_reference,
            model_name=model_name,
            model_version=model_version,
            created=created,
        )
        # Common Instance Reference: the instances this one references (its source).
        ds.ReferencedSeriesSequence = _referenced_series([src])
        _copy(ds, src, _GEOMETRY)
        _copy(ds, src, _PER_SLICE)
        if "SliceThickness" not in ds:
            ds.SliceThickness = None
        _acquisition(ds, src, modality)
        ds.SOPInstanceUID = derived_instance_uid(series_uid, str(src.SOPInstanceUID), frame)
        ds.InstanceNumber = i + 1
        ds.SourceImageSequence = _source_image(src, frame)
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.WindowCenter, ds.WindowWidth = _fits_ds(center), _fits_ds(width)
        ds.WindowCenterWidthExplanation = "SYNTHETIC series window"
        ds.PixelData = stored[i].tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = _file_meta(ds)
        out.append(ds)
    return out


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DICOMSYNTH_{__version__}"[:16]
    return meta


def write_series(datasets: Sequence[Dataset], out_dir: Path) -> list[Path]:
    """Write each instance as `<SOPInstanceUID>.dcm` (DICOM Part 10, explicit VR little
    endian). Written to a temporary name and renamed, so a reader never sees half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        tmp = path.with_suffix(".dcm.tmp")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
        paths.append(path)
    return paths
