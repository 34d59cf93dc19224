"""Build a paired training set from a folder of DICOM studies exported from a PACS: in each
study, the non-contrast T1 (input) and the first post-contrast phase of the DCE (target),
slices matched by position, the target resampled onto the input grid when the grids differ.
Pairs whose frames of reference, orientation or coverage do not match are refused, and the
report says why.

Roles come from header rules (`header_roles`, the default) or from the project's series
classifier (`classifier_roles`, seed 001); both return the same `Role`.

    python -m models.dce.pairs /exports/breast --out pairs/ [--roles classifier]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from dicom_synth.series import SeriesFiles, group_series, load_series, read_header
from models.common.geometry import Planes

NON_CONTRAST = "t1_noncontrast"
POST_CONTRAST = "dce"
OTHER = "other"

_FS_WORDS = re.compile(r"(^|[^a-z])(fs|spair|fatsat|fat[ _-]?sat|spir|stir|dixon_w|_w$|water)",
                       re.IGNORECASE)
_POST_WORDS = re.compile(r"(post|\+c|gad|kontrast|contrast|dyn|dce|phase|ph\d|_\d+ph)",
                         re.IGNORECASE)
_T1_WORDS = re.compile(r"(t1|fl3d|flash|vibe|gre|thrive|lava|e-thrive)", re.IGNORECASE)
_PRE_WORDS = re.compile(r"(^|[^a-z])(pre|mask|nativ|native|precontrast|pre-contrast)([^a-z]|$)",
                        re.IGNORECASE)
_EXCLUDE_WORDS = re.compile(r"(sub|mip|mpr|t2|dwi|diff|adc|loc|scout|survey|cad|map)",
                            re.IGNORECASE)


@dataclass(frozen=True)
class Geometry(Planes):
    """`Planes` as the headers give them (`from_slices`), and the median gap between slices."""

    def slice_gap(self) -> float:
        a = self.along
        return float(np.median(np.diff(a))) if len(a) > 1 else 1.0


@dataclass
class PairResult:
    """One study's outcome: written (with the npz path) or refused (with the reason)."""

    study_uid: str
    patient_id: str = ""
    source_uid: str | None = None
    target_uid: str | None = None
    source_description: str = ""
    target_description: str = ""
    refused: str | None = None
    resampled: bool = False
    n_slices: int = 0
    npz: str | None = None
    notes: list[str] = field(default_factory=list)


def _text(ds: Dataset, kw: str) -> str:
    v = ds.get(kw, "")
    if v is None or isinstance(v, str):
        return v or ""
    try:
        return "\\".join(str(x) for x in v)
    except TypeError:
        return str(v)


def is_fat_suppressed(ds: Dataset) -> bool:
    """ScanOptions FS / SFS / FSA..., or a fat-suppression word in the description."""
    opts = _text(ds, "ScanOptions").upper().split("\\")
    if any(o in ("FS", "SFS") or o.startswith("FS") or o == "SPAIR" for o in opts):
        return True
    desc = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}"
    return bool(_FS_WORDS.search(desc))


def has_contrast(ds: Dataset) -> bool:
    """Contrast agent in the header, or a post-contrast word in the description."""
    if str(ds.get("ContrastBolusAgent", "") or "").strip():
        return True
    return bool(_POST_WORDS.search(str(ds.get("SeriesDescription", ""))))


def series_role(ds: Dataset) -> tuple[str, str]:
    """(role, why) from one header: the input T1 without fat suppression and contrast, a
    DCE/post-contrast series, or something else."""
    desc = str(ds.get("SeriesDescription", ""))
    if str(ds.get("Modality", "")) != "MR":
        return OTHER, "not MR"
    image_type = _text(ds, "ImageType").upper()
    if "DERIVED" in image_type or "SUB" in image_type.split("\\"):
        return OTHER, f"derived image ({image_type})"
    if _EXCLUDE_WORDS.search(desc):
        return OTHER, f"description {desc!r} is not a T1 acquisition"
    seq = _text(ds, "ScanningSequence").upper()
    if "GR" not in seq and not _T1_WORDS.search(desc):
        return OTHER, f"not a gradient-echo T1 (ScanningSequence {seq or 'missing'})"
    contrast, fs = has_contrast(ds), is_fat_suppressed(ds)
    if not contrast and not fs:
        return NON_CONTRAST, "gradient echo, no fat suppression, no contrast agent"
    if contrast:
        return POST_CONTRAST, "contrast agent or post-contrast description"
    # Fat-suppressed without an agent: a DCE mask or a whole DCE with the agent unrecorded.
    return POST_CONTRAST, "fat-suppressed T1 gradient echo (DCE series)"


@dataclass(frozen=True)
class Role:
    """What a series is for pairing. `post` says whether a single-phase DCE series is
    known to be after contrast (True/False), or unknown (None: decide from headers)."""

    role: str
    why: str
    post: bool | None = None


RoleFn = Callable[[Sequence[Dataset]], Role]


def header_roles(slices: Sequence[Dataset]) -> Role:
    """Roles from header rules on the first slice (`series_role`)."""
    role, why = series_role(slices[0])
    return Role(role, why)


# Labels of dicom_synth.classify (seed 001) and what they mean here.
_CLASSIFIER_ROLES = {
    "breast_t1_nc": (NON_CONTRAST, None),
    "breast_dce_pre": (POST_CONTRAST, False),  # a DCE mask, or a whole multi-phase DCE
    "breast_dce_early": (POST_CONTRAST, True),
    "breast_dce_late": (POST_CONTRAST, True),
}


def classifier_roles(slices: Sequence[Dataset]) -> Role:
    """Roles from the project's series classifier (headers only, no pixels)."""
    from dicom_synth.classify import classify_series

    c = classify_series(list(slices), None, use_pixel_model=False)
    role, post = _CLASSIFIER_ROLES.get(c.label, (OTHER, None))
    return Role(role, f"classifier: {c.label} ({c.confidence:.2f})", post)


def _acq_seconds(ds: Dataset) -> float:
    t = str(ds.get("AcquisitionTime", "") or ds.get("SeriesTime", "") or "")
    try:
        return int(t[0:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:] or 0)
    except ValueError:
        return float("inf")


def split_phases(slices: Sequence[Dataset]) -> dict[int, list[int]]:
    """Slice indices by temporal position (TemporalPositionIdentifier, else repeated
    positions in acquisition order); one key when the series is a single phase."""
    tpi = [s.get("TemporalPositionIdentifier") for s in slices]
    if all(v is not None for v in tpi) and len(set(int(v) for v in tpi)) > 1:
        out: dict[int, list[int]] = defaultdict(list)
        for i, v in enumerate(tpi):
            out[int(v)].append(i)
        return dict(out)
    geo = Geometry.from_slices(slices)
    along = np.round(geo.along, 2)
    if len(set(along.tolist())) == len(along):
        return {1: list(range(len(slices)))}
    order = sorted(range(len(slices)), key=lambda i: (_acq_seconds(slices[i]), i))
    seen: dict[float, int] = defaultdict(int)
    out = defaultdict(list)
    for i in order:
        seen[along[i]] += 1
        out[seen[along[i]]].append(i)
    return dict(out)


def first_post_contrast(candidates: list[tuple[SeriesFiles, list[Dataset], Role]]
                        ) -> tuple[SeriesFiles, list[int], str] | None:
    """The first post-contrast phase among DCE candidates: the earliest series/phase that
    has contrast. A multi-phase series's first phase is taken as the pre-contrast mask."""
    options: list[tuple[float, SeriesFiles, list[int], str]] = []
    for sf, slices, role in candidates:
        phases = split_phases(slices)
        keys = sorted(phases)
        if len(keys) > 1:
            k = keys[1]
            t = min(_acq_seconds(slices[i]) for i in phases[k])
            options.append((t, sf, phases[k], f"phase {k} of {len(keys)} in one series "
                                               "(first taken as the mask)"))
        elif _PRE_WORDS.search(str(slices[0].get("SeriesDescription", ""))):
            continue  # a separately stored DCE mask, even if the agent was already entered
        elif role.post or (role.post is None and any(has_contrast(s) for s in slices)):
            t = min(_acq_seconds(s) for s in slices)
            options.append((t, sf, phases[keys[0]], "earliest post-contrast series"))
    if not options:
        return None
    _, sf, idx, why = min(options, key=lambda o: o[0])
    return sf, idx, why


def check_geometry(src: Geometry, tgt: Geometry, min_overlap: float = 0.9,
                   angle_tol_deg: float = 2.0) -> str | None:
    """Why a pair cannot be made (or None): orientation or coverage differ."""
    cos = float(abs(np.dot(src.normal, tgt.normal)))
    if cos < np.cos(np.deg2rad(angle_tol_deg)):
        return (f"slice orientations differ by {np.degrees(np.arccos(min(cos, 1.0))):.1f}° "
                f"(> {angle_tol_deg}°); reformat one series first")
    a_s, a_t = np.sort(src.along), np.sort(tgt.positions @ src.normal)
    lo, hi = max(a_s[0], a_t[0]), min(a_s[-1], a_t[-1])
    span = max(a_s[-1] - a_s[0], a_t[-1] - a_t[0], 1e-6)
    overlap = max(0.0, hi - lo) / span
    if overlap < min_overlap:
        return (f"coverage differs: slices overlap over {max(0.0, hi - lo):.1f} mm of "
                f"{span:.1f} mm ({overlap:.0%} < {min_overlap:.0%})")
    # In-plane: the centres of the fields of view should be near each other.
    def centre(g: Geometry) -> np.ndarray:
        h, w = g.shape
        return g.positions.mean(0) + g.row_dir * (w - 1) / 2 * g.spacing[1] + \
            g.col_dir * (h - 1) / 2 * g.spacing[0]
    c_s, c_t = centre(src), centre(tgt)
    inplane = (c_s - c_t) - np.dot(c_s - c_t, src.normal) * src.normal
    fov = min(src.shape[1] * src.spacing[1], tgt.shape[1] * tgt.spacing[1])
    if np.linalg.norm(inplane) > 0.25 * fov:
        return (f"fields of view are {np.linalg.norm(inplane):.0f} mm apart in-plane "
                f"(> 25 % of {fov:.0f} mm)")
    return None


def same_grid(src: Geometry, tgt: Geometry, tol_mm: float = 0.05) -> bool:
    return (src.shape == tgt.shape and np.allclose(src.spacing, tgt.spacing, atol=1e-4)
            and np.allclose(src.row_dir, tgt.row_dir, atol=1e-4)
            and np.allclose(src.col_dir, tgt.col_dir, atol=1e-4)
            and len(src.positions) == len(tgt.positions)
            and np.allclose(src.positions, tgt.positions, atol=tol_mm))


def match_slices(src: Geometry, tgt: Geometry, tol_mm: float | None = None) -> list[tuple[int, int]]:
    """(source index, target index) for source slices with a target slice at the same
    position (within half a slice gap) and the same in-plane grid."""
    tol = tol_mm if tol_mm is not None else 0.5 * min(abs(src.slice_gap()), abs(tgt.slice_gap()))
    out = []
    for i, p in enumerate(src.positions):
        d = np.linalg.norm(tgt.positions - p, axis=1)
        j = int(np.argmin(d))
        if d[j] <= tol:
            out.append((i, j))
    return out


def resample_onto(src: Geometry, tgt: Geometry, tgt_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The target volume sampled at the source voxels (trilinear in patient coordinates).
    Returns (volume on the source grid, bool per source slice inside the target coverage)."""
    h, w = src.shape
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    along_t = tgt.positions @ tgt.normal
    order = np.argsort(along_t)
    along_sorted = along_t[order]
    out = np.zeros((len(src.positions), h, w), np.float32)
    inside = np.zeros(len(src.positions), bool)
    vol_sorted = tgt_volume[order]
    for i, origin in enumerate(src.positions):
        pts = (origin[None, None, :] + cc[..., None] * src.spacing[1] * src.row_dir
               + rr[..., None] * src.spacing[0] * src.col_dir)
        d = pts @ tgt.normal
        k = np.interp(d, along_sorted, np.arange(len(order)), left=-1, right=-1)
        if np.all(k < 0):
            continue
        inside[i] = bool(np.mean(k >= 0) > 0.99)
        k0 = np.clip(np.round(k).astype(int), 0, len(order) - 1)
        base = tgt.positions[order][k0]
        rel = pts - base
        r_t = (rel @ tgt.col_dir) / tgt.spacing[0]
        c_t = (rel @ tgt.row_dir) / tgt.spacing[1]
        out[i] = ndimage.map_coordinates(vol_sorted, [np.clip(k, 0, None), r_t, c_t], order=1,
                                         mode="constant", cval=0.0)
    return out, inside


def pair_study(study_uid: str, series: list[SeriesFiles], out_dir: Path | None,
               min_overlap: float = 0.9, role_fn: RoleFn = header_roles) -> PairResult:
    """Choose, check, match (or resample) and write the pair of one study."""
    res = PairResult(study_uid=study_uid)
    noncon: list[tuple[SeriesFiles, list[Dataset], Role]] = []
    dce: list[tuple[SeriesFiles, list[Dataset], Role]] = []
    for sf in series:
        if read_header(sf.files[0]) is None:
            continue
        slices = load_series(sf.files, pixels=False).slices
        role = role_fn(slices)
        res.notes.append(f"{sf.series_description or sf.series_instance_uid}: {role.role} "
                         f"({role.why})")
        if role.role == OTHER:
            continue
        (noncon if role.role == NON_CONTRAST else dce).append((sf, slices, role))
    if not noncon:
        res.refused = "no non-contrast, non-fat-suppressed T1 series in the study"
        return res
    post = first_post_contrast(dce)
    if post is None:
        res.refused = "no post-contrast (DCE) series in the study"
        return res
    tgt_sf, tgt_idx, why = post
    res.notes.append(f"target: {why}")
    # The input: the non-contrast T1 acquired last before the first post-contrast phase.
    src_sf, _, _ = max(noncon, key=lambda c: (_acq_seconds(c[1][0]) < float("inf"),
                                              _acq_seconds(c[1][0])))
    res.source_uid, res.target_uid = src_sf.series_instance_uid, tgt_sf.series_instance_uid
    res.source_description, res.target_description = (src_sf.series_description,
                                                       tgt_sf.series_description)
    src_loaded = load_series(src_sf.files, pixels=True)
    tgt_loaded = load_series(tgt_sf.files, pixels=True)
    s0, t0 = src_loaded.slices[0], tgt_loaded.slices[tgt_idx[0]]
    res.patient_id = str(s0.get("PatientID", "") or "")
    for_s, for_t = str(s0.get("FrameOfReferenceUID", "")), str(t0.get("FrameOfReferenceUID", ""))
    if not for_s or not for_t or for_s != for_t:
        res.refused = (f"different FrameOfReferenceUID ({for_s or 'missing'} vs "
                       f"{for_t or 'missing'}): not one patient coordinate system; "
                       "register the series first")
        return res
    try:
        src_geo = Geometry.from_slices(src_loaded.slices)
        tgt_slices = [tgt_loaded.slices[i] for i in tgt_idx]
        tgt_geo = Geometry.from_slices(tgt_slices)
    except (AttributeError, ValueError, TypeError) as exc:
        res.refused = f"missing geometry attributes ({exc})"
        return res
    reason = check_geometry(src_geo, tgt_geo, min_overlap)
    if reason:
        res.refused = reason
        return res
    assert src_loaded.volume is not None and tgt_loaded.volume is not None
    tgt_vol = tgt_loaded.volume[tgt_idx]
    matches = match_slices(src_geo, tgt_geo, tol_mm=0.05) if src_geo.shape == tgt_geo.shape \
        and np.allclose(src_geo.spacing, tgt_geo.spacing, atol=1e-4) else []
    if len(matches) >= 0.9 * len(src_geo.positions):
        si, ti = zip(*matches, strict=True)
        source, target = src_loaded.volume[list(si)], tgt_vol[list(ti)]
    else:
        target, inside = resample_onto(src_geo, tgt_geo, tgt_vol)
        source, target = src_loaded.volume[inside], target[inside]
        res.resampled = True
    res.n_slices = int(source.shape[0])
    if res.n_slices == 0:
        res.refused = "no source slice lies inside the target's coverage"
        return res
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        npz = out_dir / f"{study_uid}.npz"
        np.savez_compressed(npz, source=source.astype(np.float32), target=target.astype(np.float32))
        res.npz = str(npz)
        (out_dir / f"{study_uid}.json").write_text(json.dumps(asdict(res), indent=1))
    return res


def build_pairs(paths: Sequence[Path], out_dir: Path | None, min_overlap: float = 0.9,
                role_fn: RoleFn = header_roles) -> list[PairResult]:
    """Pair every study found under the paths."""
    by_study: dict[str, list[SeriesFiles]] = defaultdict(list)
    for sf in group_series(paths):
        by_study[sf.study_instance_uid].append(sf)
    return [pair_study(uid, ss, out_dir, min_overlap, role_fn)
            for uid, ss in sorted(by_study.items())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Pair non-contrast T1 with DCE phase 1 per study.")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--min-overlap", type=float, default=0.9)
    p.add_argument("--roles", choices=["headers", "classifier"], default="headers",
                   help="header rules, or the project's series classifier")
    a = p.parse_args(argv)
    role_fn = classifier_roles if a.roles == "classifier" else header_roles
    results = build_pairs(a.paths, a.out, a.min_overlap, role_fn)
    for r in results:
        state = f"REFUSED: {r.refused}" if r.refused else (
            f"{r.n_slices} slices{' (resampled)' if r.resampled else ''} -> {r.npz}")
        print(f"{r.study_uid}: {r.source_description!r} + {r.target_description!r}: {state}")
    ok = sum(r.refused is None for r in results)
    print(f"{ok} of {len(results)} studies paired")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
