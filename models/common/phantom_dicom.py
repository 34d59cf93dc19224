"""The phantom DICOM writer every family's `phantom_dicom` uses: UIDs derived from the seed
(one seed always writes the same study), the SOP and file meta, dates, the Siemens-like
site, patient, plane geometry and 16-bit/12-stored pixel module, and one file per slice.
A family adds only its protocol headers (sequence, coil, contrast agent, CT exposure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root


def uid(*parts: object) -> str:
    """A UID derived from `parts`: the same parts always give the same UID."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def require_one_of(value: str, choices: Sequence[str], what: str) -> None:
    """A ValueError naming the choices unless `value` (the argument `what`) is one of them."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def to_stored(volume: np.ndarray, offset: float = 0.0, bits: int = 12) -> np.ndarray:
    """Scanner units (+ offset) to stored uint16 pixels, rounded and clipped to `bits`."""
    return np.clip(np.rint(volume + offset if offset else volume), 0, 2**bits - 1).astype(np.uint16)


def study_day(seed: int, hour: int, spread_minutes: int) -> tuple[dt.date, dt.datetime]:
    """The study's day and start time, spread over a year and over the morning by seed."""
    day = dt.date(2024, 1, 1) + dt.timedelta(days=seed % 365)
    return day, dt.datetime.combine(day, dt.time(hour, 0)) + dt.timedelta(minutes=seed % spread_minutes)


def new_instance(sop_class: str, sop_uid: str, image_type: Sequence[str], day: dt.date,
                 study_time: str, series_time: str) -> Dataset:
    """A header with file meta, SOP, character set, image type and the four dates and times."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_time
    return ds


def set_site(ds: Dataset, modality: str, model: str, software: str, station: str) -> None:
    ds.Modality = modality
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = model
    ds.SoftwareVersions = software
    ds.InstitutionName = "Phantom Hospital"
    ds.StationName = station
    ds.ReferringPhysicianName = ""


def set_patient(ds: Dataset, name: str, patient_id: str, birth_date: str, sex: str, age: str) -> None:
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.PatientAge = age


def set_mr_acquisition(ds: Dataset, *, frequency: float, echo_train: int, bandwidth: float, coil: str,
                       shape: tuple[int, int]) -> None:
    """The MR acquisition attributes every phantom protocol shares: 3 T proton imaging, one
    average, full sampling, body transmit coil, phase encoding along rows."""
    rows, cols = shape
    ds.NumberOfAverages = 1
    ds.ImagingFrequency = frequency
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = 3
    ds.EchoTrainLength = echo_train
    ds.PercentSampling = 100
    ds.PercentPhaseFieldOfView = 100
    ds.PixelBandwidth = bandwidth
    ds.ReceiveCoilName = coil
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, cols, rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"


def set_plane(ds: Dataset, *, study_uid: str, series_uid: str, frame_uid: str, series_number: int, index: int,
              z: float, corner: tuple[float, float], shape: tuple[int, int], pixel_spacing: Sequence[str]) -> None:
    """Study/series identity, an axial slice at z (first pixel at `corner`), and the pixel
    module: MONOCHROME2, 16 bits allocated, 12 stored, unsigned."""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    x0, y0 = corner
    ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.PixelSpacing = list(pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def centred_corner(rows: int, cols: int, px: float) -> tuple[float, float]:
    """(x, y) of the first pixel's centre for an image centred on the isocentre."""
    return -(cols - 1) / 2 * px, -(rows - 1) / 2 * px


def write_series(out_dir: Path, headers: Sequence[Dataset], pixels: np.ndarray, stem: str) -> list[Path]:
    """One file per slice, `<stem>-001.dcm` ..., in slice order; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(headers):
        ds.PixelData = pixels[k].tobytes()
        path = out_dir / f"{stem}-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
