"""What the listener negotiates: storage SOP classes, transfer syntaxes and statuses."""

from __future__ import annotations

import tempfile
from typing import Any

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import dimse_messages

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
VERIFICATION = UID("1.2.840.10008.1.1")

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    MR_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
)

# Preferred first: when a peer proposes several in one context, pynetdicom accepts the
# first of the peer's that is in this list.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# C-STORE response statuses (PS3.4 Annex B.2.3 and PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class TolerantSpool:
    """A pynetdicom receive spool file whose writes never raise.

    pynetdicom writes a received data set to a temporary file in its network thread,
    where an exception aborts the association. With the disk full we would rather answer
    0xA700: the error is recorded here and the C-STORE handler answers from it.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._f = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 (closed by pynetdicom)
        self.name = self._f.name
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls `.file.flush()` after every fragment

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._f.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._f.file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as exc:
            self.error = self.error or exc


def install_tolerant_spool() -> None:
    """Make pynetdicom spool received data sets through `TolerantSpool` (process-wide;
    behaves exactly like the default while the disk has room)."""
    dimse_messages.NamedTemporaryFile = TolerantSpool  # type: ignore[assignment,misc]


def spool_error(request: object) -> OSError | None:
    """The error pynetdicom met while spooling this C-STORE request, if any."""
    spool = getattr(request, "_dataset_file", None)
    return getattr(spool, "error", None)
