"""Build registered brain studies from a folder of DICOM studies exported from a PACS: in
each study, the T1, T2, T1c and FLAIR series (recognised by the service's own series
classifier and header rules) resampled onto one grid through the patient coordinate system
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing -> millimetres; trilinear).
The grid is the reference contrast's (the most axial series of the study): its slices and
its field of view, as a square of `side` pixels. A study is refused, and the report says
why, when a contrast is missing, when the series' frames of reference differ, or when a
contrast covers less than `min_coverage` of the grid.

    python -m models.brain.pairs /exports/brain --out studies/ [--side 128] [--min-coverage 0.9]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from dicom_synth.classify import classify_series
from dicom_synth.series import SeriesFiles, SeriesReadError, group_series, load_series
from models.brain.phantom import CONTRASTS
from models.common.geometry import Planes

MIN_COVERAGE = 0.9  # of the grid's voxels inside every contrast's own volume
NAMES = {"t1": "T1", "t2": "T2", "t1c": "T1c", "flair": "FLAIR"}
_LABELS = {f"brain_{c}": c for c in CONTRASTS}  # classifier label -> contrast


@dataclass(frozen=True)
class Grid(Planes):
    """`Planes` with unit directions and the gap between slice centres."""

    gap: float  # between slice centres along the normal (the thickness for one slice)

    @classmethod
    def from_slices(cls, slices: Sequence[Dataset]) -> Grid:
        """From headers sorted along the normal (as `load_series` sorts them)."""
        p = Planes.from_slices(slices)
        row, col = p.row_dir / np.linalg.norm(p.row_dir), p.col_dir / np.linalg.norm(p.col_dir)
        along = p.positions @ np.cross(row, col)
        gap = float(np.median(np.diff(along))) if len(slices) > 1 else \
            float(slices[0].get("SliceThickness", 0) or 1.0)
        return cls(p.positions, row, col, p.spacing, p.shape, gap)

    def slice_points(self, k: int) -> np.ndarray:
        """(H, W, 3) patient coordinates of slice k's pixel centres."""
        rr, cc = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return (self.positions[k] + cc[..., None] * self.spacing[1] * self.row_dir
                + rr[..., None] * self.spacing[0] * self.col_dir)

    def indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Continuous (slice, row, column) indices of patient points (..., 3), and whether each
        lies inside the volume (within half a pixel or half a slice gap of its edge voxels)."""
        along, n = self.along, len(self.positions)
        s = points @ self.normal
        k = np.interp(s, along, np.arange(n)) if n > 1 else np.zeros(s.shape)
        half = abs(self.gap) / 2
        inside = (s >= along.min() - half) & (s <= along.max() + half)
        origin = np.stack([np.interp(k, np.arange(n), self.positions[:, d]) for d in range(3)], -1)
        rel = points - origin
        r = rel @ self.col_dir / self.spacing[0]
        c = rel @ self.row_dir / self.spacing[1]
        h, w = self.shape
        inside &= (r >= -0.5) & (r <= h - 0.5) & (c >= -0.5) & (c <= w - 0.5)
        return k, r, c, inside

    def square(self, side: int) -> Grid:
        """The same slices as a side x side square over the smaller side of the field of
        view, centred where this grid is (exactly this grid when it is side x side already)."""
        h, w = self.shape
        length = min(h * self.spacing[0], w * self.spacing[1])
        px = length / side
        centres = (self.positions + (w - 1) / 2 * self.spacing[1] * self.row_dir
                   + (h - 1) / 2 * self.spacing[0] * self.col_dir)
        first = centres - (side - 1) / 2 * px * (self.row_dir + self.col_dir)
        return Grid(first, self.row_dir, self.col_dir, (px, px), (side, side), self.gap)

    def same_as(self, other: Grid, tol_mm: float = 0.01) -> bool:
        return (self.shape == other.shape and len(self.positions) == len(other.positions)
                and np.allclose(self.spacing, other.spacing, atol=1e-4)
                and np.allclose(self.row_dir, other.row_dir, atol=1e-4)
                and np.allclose(self.col_dir, other.col_dir, atol=1e-4)
                and np.allclose(self.positions, other.positions, atol=tol_mm))


def resample(volume: np.ndarray, src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """`volume` (on `src`) sampled trilinearly at `dst`'s voxel centres, through patient
    coordinates; 0 outside `src`. Returns (values on dst, bool: inside src) of dst's shape."""
    out = np.zeros((len(dst.positions), *dst.shape), np.float32)
    inside = np.zeros(out.shape, bool)
    vol = np.asarray(volume, np.float32)
    for k in range(len(dst.positions)):
        kk, r, c, ins = src.indices(dst.slice_points(k))
        vals = ndimage.map_coordinates(vol, [kk, r, c], order=1, mode="nearest")
        out[k], inside[k] = np.where(ins, vals, 0.0), ins
    return out, inside


@dataclass
class StudyResult:
    """One study's outcome: registered (with the npz path) or refused (with the reason)."""

    study_uid: str
    patient_id: str = ""
    series: dict[str, str] = field(default_factory=dict)  # contrast -> SeriesDescription
    series_uids: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    refused: str | None = None
    resampled: list[str] = field(default_factory=list)  # contrasts whose own grid is not the study's
    coverage: dict[str, float] = field(default_factory=dict)
    n_slices: int = 0
    npz: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    result: StudyResult
    chosen: dict[str, tuple[SeriesFiles, list[Dataset]]]


def contrast_of(slices: Sequence[Dataset]) -> tuple[str | None, str]:
    """(brain contrast or None, why) from the service's classifier on the headers."""
    ds = slices[0]
    if str(ds.get("SyntheticData", "")).upper() == "YES":
        return None, "synthetic (SyntheticData YES)"
    image_type = "\\".join(str(v) for v in (ds.get("ImageType") or []))
    if "DERIVED" in image_type.upper():
        return None, f"derived image ({image_type})"
    c = classify_series(list(slices), None, use_pixel_model=False)
    return _LABELS.get(c.label), f"classifier: {c.label} ({c.confidence:.2f})"


def _axial(slices: Sequence[Dataset]) -> float:
    try:
        return round(abs(float(Grid.from_slices(slices).normal[2])), 2)
    except (AttributeError, TypeError, ValueError):
        return -1.0


def plan_study(study_uid: str, series: list[SeriesFiles]) -> _Plan:
    """Which series is which contrast (per contrast the most axial, then the longest), and
    the reference contrast (the most axial, then in T1, T2, T1c, FLAIR order)."""
    res = StudyResult(study_uid)
    found: dict[str, list[tuple[SeriesFiles, list[Dataset]]]] = defaultdict(list)
    for sf in series:
        if sf.modality != "MR":
            res.notes.append(f"{sf.series_description or sf.series_instance_uid}: {sf.modality or '?'}, not MR")
            continue
        try:
            slices = load_series(sf.files, pixels=False).slices
        except (SeriesReadError, OSError, ValueError) as exc:
            res.notes.append(f"{sf.series_description or sf.series_instance_uid}: unreadable ({exc})")
            continue
        res.patient_id = res.patient_id or str(slices[0].get("PatientID", "") or "")
        contrast, why = contrast_of(slices)
        res.notes.append(f"{sf.series_description or sf.series_instance_uid}: {contrast or 'not used'} ({why})")
        if contrast:
            found[contrast].append((sf, slices))
    chosen = {c: max(found[c], key=lambda e: (_axial(e[1]), len(e[1]))) for c in CONTRASTS if found[c]}
    res.series = {c: sf.series_description for c, (sf, _) in chosen.items()}
    res.series_uids = {c: sf.series_instance_uid for c, (sf, _) in chosen.items()}
    missing = [NAMES[c] for c in CONTRASTS if c not in chosen]
    if len(missing) == len(CONTRASTS):
        res.refused = "no brain MR series (T1, T2, T1c, FLAIR) in the study"
    elif missing:
        res.refused = (f"no {', '.join(missing)} series in the study (found "
                       f"{', '.join(NAMES[c] for c in chosen)}); every contrast is needed")
    else:
        res.reference = max(CONTRASTS, key=lambda c: (_axial(chosen[c][1]), -CONTRASTS.index(c)))
        frames = {c: str(chosen[c][1][0].get("FrameOfReferenceUID", "") or "") for c in CONTRASTS}
        ref_frame = frames[res.reference]
        odd = [c for c in CONTRASTS if not frames[c] or frames[c] != ref_frame]
        if odd:
            res.refused = ("different FrameOfReferenceUID: " + ", ".join(
                f"{NAMES[c]} {frames[c] or 'missing'}" for c in odd) + f" vs {NAMES[res.reference]} "
                f"{ref_frame or 'missing'}: not one patient coordinate system; register the series first")
    return _Plan(res, chosen if res.refused is None else {})


def reference_side(plan: _Plan) -> int:
    _, slices = plan.chosen[plan.result.reference]
    return min(int(slices[0].Rows), int(slices[0].Columns))


def register_study(plan: _Plan, side: int, out_dir: Path | None, min_coverage: float = MIN_COVERAGE) -> StudyResult:
    """Every contrast onto the reference's square grid; the kept slices (every contrast
    covering at least `min_coverage` of the slice) written as out_dir/<study>.npz."""
    res = plan.result
    if res.refused is not None:
        return res
    try:
        loaded = {c: load_series(sf.files, pixels=True) for c, (sf, _) in plan.chosen.items()}
        grids = {c: Grid.from_slices(s.slices) for c, s in loaded.items()}
    except (SeriesReadError, AttributeError, TypeError, ValueError) as exc:
        res.refused = f"missing or unreadable geometry or pixels ({exc})"
        return res
    dst = grids[res.reference].square(side)
    images, inside = {}, {}
    for c in CONTRASTS:
        assert loaded[c].volume is not None
        images[c], inside[c] = resample(loaded[c].volume, grids[c], dst)
        res.coverage[c] = round(float(inside[c].mean()), 4)
        if not grids[c].same_as(dst):
            res.resampled.append(c)
    short = [c for c in CONTRASTS if res.coverage[c] < min_coverage]
    if short:
        res.refused = "coverage does not match: " + ", ".join(
            f"{NAMES[c]} covers {res.coverage[c]:.0%}" for c in short) + \
            f" of the {NAMES[res.reference]} grid (< {min_coverage:.0%})"
        return res
    keep = np.all([inside[c].mean(axis=(1, 2)) >= min_coverage for c in CONTRASTS], axis=0)
    res.n_slices = int(keep.sum())
    if res.n_slices == 0:
        res.refused = f"no slice of the {NAMES[res.reference]} grid lies inside every contrast"
        return res
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        npz = out_dir / f"{res.study_uid}.npz"
        np.savez_compressed(npz, images=np.stack([images[c][keep] for c in CONTRASTS]),
                            positions=dst.positions[keep], row_dir=dst.row_dir, col_dir=dst.col_dir,
                            spacing=np.array(dst.spacing))
        res.npz = str(npz)
        (out_dir / f"{res.study_uid}.json").write_text(json.dumps(asdict(res), indent=1))
    return res


def build_studies(paths: Sequence[Path], out_dir: Path | None, side: int | None = None, multiple: int = 1,
                  min_coverage: float = MIN_COVERAGE) -> tuple[list[StudyResult], int]:
    """Every study under the paths registered (or refused): (results, the grid's side). The
    side is `side`, else the smallest reference matrix side, floored to `multiple`."""
    by_study: dict[str, list[SeriesFiles]] = defaultdict(list)
    for sf in group_series(paths):
        by_study[sf.study_instance_uid].append(sf)
    plans = [plan_study(uid, ss) for uid, ss in sorted(by_study.items())]
    usable = [p for p in plans if p.result.refused is None]
    if side is None:
        side = min((reference_side(p) for p in usable), default=0) // multiple * multiple
    if usable and side < max(multiple, 1):
        for p in usable:
            p.result.refused = f"images of {reference_side(p)} pixels: under the network's multiple {multiple}"
    return [register_study(p, side, out_dir, min_coverage) for p in plans], side


def describe(r: StudyResult) -> str:
    if r.refused:
        return f"{r.study_uid}: refused: {r.refused}"
    moved = f", resampled {', '.join(NAMES[c] for c in r.resampled)}" if r.resampled else ""
    return (f"{r.study_uid}: " + " + ".join(f"{NAMES[c]} {r.series[c]!r}" for c in CONTRASTS)
            + f" on the {NAMES[r.reference or 't1']} grid, {r.n_slices} slices{moved}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Register the brain contrasts of every study onto one grid.")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=None, help="grid side in pixels (default: the smallest matrix)")
    p.add_argument("--min-coverage", type=float, default=MIN_COVERAGE)
    a = p.parse_args(argv)
    results, side = build_studies(a.paths, a.out, a.side, min_coverage=a.min_coverage)
    for r in results:
        print(describe(r))
    ok = sum(r.refused is None for r in results)
    print(f"{ok} of {len(results)} studies registered on {side} x {side} grids")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
