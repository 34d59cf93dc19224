"""WADO-RS (PS3.18 10.4): metadata, instances, frames and rendered images of the index.

Metadata is the header as DICOM JSON (pydicom's `to_json_dict`) with the pixel data as a
BulkDataURI to the instance's frames; frames are sent uncompressed (native little
endian, what `application/octet-stream` means); rendered frames are 8-bit PNG (zlib and
a minimal PNG writer, no imaging library) or JPEG when Pillow is installed, windowed by
the instance's first VOI window or, without one, by its pixel range.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from service.dicomweb.index import IndexedInstance


class FrameError(ValueError):
    """A frame that does not exist (answered 404 with the reason) or a malformed list (400)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code


def metadata(inst: IndexedInstance, base_url: str) -> dict:
    header = inst.header
    frames_url = (f"{base_url}/studies/{inst.study_uid}/series/{inst.series_uid}"
                  f"/instances/{inst.sop_uid}/frames/1")
    out = header.to_json_dict(bulk_data_threshold=1 << 20,
                              bulk_data_element_handler=lambda el: frames_url)
    meta = getattr(header, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        out["00020010"] = {"vr": "UI", "Value": [str(meta.TransferSyntaxUID)]}
    if "PixelData" not in header and "Rows" in header:
        out["7FE00010"] = {"vr": "OW", "BulkDataURI": frames_url}
    return out


def frame_numbers(text: str, count: int) -> list[int]:
    try:
        numbers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise FrameError(400, f"frame list must be numbers separated by commas, not {text!r}") from exc
    if not numbers:
        raise FrameError(400, "no frame number given")
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise FrameError(404, f"frame {bad[0]} does not exist: the instance has {count} frame(s)")
    return numbers


def _pixels(inst: IndexedInstance) -> tuple[Dataset, np.ndarray]:
    """The whole data set and its pixels as (frames, rows, columns[, samples])."""
    ds = pydicom.dcmread(inst.path)
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis]
    if spp == 1 and arr.ndim == 4:
        arr = arr[..., 0]
    return ds, arr


def frame_count(inst: IndexedInstance) -> int:
    return int(inst.header.get("NumberOfFrames", 1) or 1)


def frames(inst: IndexedInstance, numbers: list[int]) -> list[bytes]:
    """The frames, uncompressed little endian, in the order asked."""
    _, arr = _pixels(inst)
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return [np.ascontiguousarray(little[n - 1]).tobytes() for n in numbers]


def _window(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """8-bit display values: rescale, then the first VOI window (or the frame's range)."""
    values = frame.astype(np.float64)
    if frame.ndim == 3:  # colour: shown as stored
        return np.clip(values if frame.dtype == np.uint8 else values / max(values.max(), 1) * 255, 0, 255
                       ).astype(np.uint8)
    values = values * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = max(float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width), 1.0)
        low, high = c - w / 2, c + w / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-6) * 255
    out = np.clip(scaled, 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def png(image: np.ndarray) -> bytes:
    """A PNG of an 8-bit grey (rows, columns) or RGB (rows, columns, 3) image."""
    rows, cols = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    raw = b"".join(b"\x00" + np.ascontiguousarray(image[r]).tobytes() for r in range(rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", cols, rows, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(
        b"IEND", b"")


def jpeg_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def rendered(inst: IndexedInstance, number: int, media: str) -> bytes:
    """Frame `number` rendered as `media` (image/png, or image/jpeg with Pillow)."""
    ds, arr = _pixels(inst)
    if not 1 <= number <= arr.shape[0]:
        raise FrameError(404, f"frame {number} does not exist: the instance has {arr.shape[0]} frame(s)")
    image = _window(ds, arr[number - 1])
    if media == "image/png":
        return png(image)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
