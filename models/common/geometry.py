"""Where a series' slices lie: the parallel image planes of its headers in patient
coordinates (mm), which the families' pairing (`models.brain.pairs`, `models.dce.pairs`)
matches and resamples between."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset


@dataclass(frozen=True)
class Planes:
    """Parallel image planes, sorted along the normal: pixel (row r, column c) of slice k lies
    at positions[k] + c * spacing[1] * row_dir + r * spacing[0] * col_dir (DICOM PS3.3
    C.7.6.2.1.1)."""

    positions: np.ndarray  # (N, 3) ImagePositionPatient per slice
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) = PixelSpacing
    shape: tuple[int, int]  # (Rows, Columns)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def along(self) -> np.ndarray:
        """Slice positions along the normal."""
        return self.positions @ self.normal

    @classmethod
    def from_slices(cls, slices: Sequence[Dataset]) -> Planes:
        """From headers sorted along the normal (as `load_series` sorts them), directions as stored."""
        iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
        ps = [float(v) for v in slices[0].PixelSpacing]
        return cls(np.array([[float(v) for v in s.ImagePositionPatient] for s in slices]), iop[:3], iop[3:],
                   (ps[0], ps[1]), (int(slices[0].Rows), int(slices[0].Columns)))
