"""Build a synthetic derived image series from source slice headers and model output.

The new instances are written from scratch from a whitelist of source attributes
(patient, study, frame of reference, slice geometry, and the acquisition attributes
of the same modality), never by cloning the source: private tags, overlays, icons,
contrast claims and vendor oddities therefore cannot leak into a synthetic image.
Pure: no I/O except `write_series`.
"""

from __future__ import annotations

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
from dicom_synth.uids import derived_instance_uid, derived_series_uid

MANUFACTURER = "dicom-synth"

# Coded concepts (DICOM part 16).
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")  # CID 7005
ACQUISITION_EQUIPMENT = ("109101", "DCM", "Acquisition Equipment")  # CID 7005
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
# CID 7203 (extensible) has no "synthesis" concept; DCM 123110 names the method family.
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
# The acquisition the pixels derive from, copied only when source and output modality agree.
_MR_ACQUISITION = (
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
    "AngioFlag", "RepetitionTime", "EchoTime", "EchoTrainLength", "InversionTime",
    "NumberOfAverages", "ImagingFrequency", "ImagedNucleus", "EchoNumbers",
    "MagneticFieldStrength", "SpacingBetweenSlices", "NumberOfPhaseEncodingSteps",
    "PercentSampling", "PercentPhaseFieldOfView", "PixelBandwidth", "ReceiveCoilName",
    "TransmitCoilName", "AcquisitionMatrix", "InPlanePhaseEncodingDirection", "FlipAngle",
    "VariableFlipAngleFlag", "SAR", "dBdt",
)
_CT_ACQUISITION = (
    "KVP", "DataCollectionDiameter", "ReconstructionDiameter", "DistanceSourceToDetector",
    "DistanceSourceToPatient", "GantryDetectorTilt", "TableHeight", "RotationDirection",
    "ExposureTime", "XRayTubeCurrent", "Exposure", "FilterType", "GeneratorPower",
    "FocalSpots", "ConvolutionKernel", "CTDIvol",
)
# Type 1 / Type 2 attributes of the MR and CT Image modules and their fallback values.
_MR_REQUIRED: dict[str, Any] = {
    "ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": None,
    "MRAcquisitionType": None, "EchoTime": None, "EchoTrainLength": None,
    "RepetitionTime": None,
}
_CT_REQUIRED: dict[str, Any] = {"KVP": None, "AcquisitionNumber": None}


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
    """Copy the keywords `src` has; an empty Type 2 value stays empty."""
    for kw in keywords:
        if kw in src:
            dst[kw] = src[kw]


def _dicom_dt(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def _fits_ds(value: float) -> str:
    """A decimal string that fits 16 characters."""
    return f"{value:.6g}"


def _validate(
    sources: Sequence[Dataset],
    pixels: np.ndarray,
    frames: Sequence[int | None],
    job_id: str,
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
    if not job_id:
        raise ValueError("job_id must not be empty")
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
    for i, src in enumerate(sources):
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
    model_name: str,
    model_version: str,
    created: datetime,
) -> Dataset:
    """Attributes shared by every instance of the output series."""
    ds = Dataset()
    _copy(ds, first, _PATIENT)
    _copy(ds, first, _STUDY)
    _copy(ds, first, _COMMON)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "PositionReferenceIndicator"):
        if kw not in ds:
            setattr(ds, kw, None)  # Type 2: present, may be empty
    if "PatientPosition" not in ds:
        ds.PatientPosition = ""
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
    ds.DerivationDescription = (
        f"Synthesized by model {model_name} version {model_version} "
        f"(dicom-synth {__version__}) from series {first.SeriesInstanceUID}; "
        "not an acquired image, no contrast agent given"
    )[:1024]
    ds.DerivationCodeSequence = DicomSequence([_code_item(DERIVATION_AI)])
    ds.ImageComments = f"SYNTHETIC image from model {model_name} {model_version}; not acquired"
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
    """The modality module's acquisition attributes: copied when the source is of the same
    modality, else (CT source, MR output) set to their neutral values."""
    same = str(src.get("Modality", "")) == modality
    if modality == "MR":
        if same:
            _copy(ds, src, _MR_ACQUISITION)
        for kw, default in _MR_REQUIRED.items():
            if not same or kw not in ds:
                setattr(ds, kw, default)
        if "IR" in list(np.atleast_1d(ds.ScanningSequence)) and "InversionTime" not in ds:
            ds.InversionTime = None
    else:
        if same:
            _copy(ds, src, _CT_ACQUISITION)
        for kw, default in _CT_REQUIRED.items():
            if kw not in ds:
                setattr(ds, kw, default)


def build_derived_series(
    sources: Sequence[Dataset],
    pixels: np.ndarray,
    *,
    job_id: str,
    output_index: int,
    label: str,
    model_name: str,
    model_version: str,
    modality: str = "MR",
    series_number: int | None = None,
    source_frame_numbers: Sequence[int | None] | None = None,
    created: datetime | None = None,
) -> list[Dataset]:
    """One new instance per source slice, in source order, carrying the contract's
    attributes (see DESIGN.md). `pixels` (N, H, W) are stored values, rounded and clipped
    to uint16. `source_frame_numbers[i]` is the frame of an enhanced multi-frame source
    that slice i came from (None for single-frame sources). Raises ValueError on
    mismatched inputs, before building anything."""
    modality = str(modality).upper()
    frames: list[int | None] = (
        list(source_frame_numbers) if source_frame_numbers is not None else [None] * len(sources)
    )
    _validate(sources, pixels, frames, job_id, output_index, label, modality)
    created = created or datetime.now()
    stored = np.clip(np.rint(pixels), 0, 65535).astype("<u2")
    first = sources[0]
    if series_number is None:
        series_number = int(first.get("SeriesNumber") or 0) + 1000 + output_index
    description = f"SYNTHETIC {label.strip()}"[:64]
    series_uid = derived_series_uid(job_id, output_index)
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
        ds.SOPInstanceUID = derived_instance_uid(job_id, output_index, i)
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
