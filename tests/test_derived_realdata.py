"""The output series built from every real scanner series in REALDATA that the reader loads
as MR or CT: dciodvfy reports zero errors on every output instance, and no instance
claims the source's acquisition. Pixels are the source volume rescaled to 0..4095, as a
model's output would be."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_synth.derived import write_series
from dicom_synth.series import SeriesReadError, group_series, load_series
from service.store import InvalidInstance, SeriesStore

from .conftest import MISSING_COLLECTIONS, REALDATA
from .test_derived import _dciodvfy, build, claimed_acquisition

# Every series of REALDATA the reader loads as MR or CT (first file, relative to REALDATA).
EXPECTED_SOURCES = {
    "dcm_qa_enh/Siemens_XA10_REST1/6_1.dcm", "heudiconv/axasc35.dcm",
    "heudiconv/enhanced_XA_anat-scout_MPR_cor.dcm", "heudiconv/phantom.dcm",
    "heudiconv/b0dwiForFmap/b0dwi_for_fmap+00001.dcm", "nibabel/philips_mprage.dcm",
    "nibabel/siemens_dwi_0.dcm", "nibabel/slicethickness_empty_string.dcm",
    "pydicom_data/693_UNCR.dcm", "pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm",
    "pydicom_data/MR2_UNCR.dcm", "pydicom_data/bad_sequence.dcm",
    "pydicom_data/eCT_Supplemental.dcm", "pydicom_data/emri_small.dcm",
    "pydicom_data/explicit_VR-UN.dcm",
}

# Loaded, but refused by the builder with the reason (no geometry: nothing to register to).
REFUSED_BY_BUILDER = {"pydicom_data/emri_small.dcm": "has no ImagePositionPatient"}
# Refused by the service itself (the series store's structure check), so it makes nothing
# from them: their own Study/Series/SOP UIDs are hex digests, not valid UIDs.
REFUSED_BY_STORE = {"pydicom_data/bad_sequence.dcm": "not a valid UID"}


def _source_name(files: list[Path]) -> str:
    return str(sorted(files)[0].relative_to(REALDATA))


def _real_series() -> list[tuple[str, list[Path]]]:
    if not REALDATA.is_dir():
        return []
    groups = [g for g in group_series([REALDATA]) if g.modality in ("MR", "CT")]
    return sorted((_source_name(g.files), g.files) for g in groups)


REAL_SERIES = _real_series()


def _loadable() -> dict[str, str]:
    """Source name -> 'MR' / 'CT' for the series the reader loads with pixels."""
    out = {}
    for name, files in REAL_SERIES:
        try:
            loaded = load_series(files, pixels=True)
        except SeriesReadError as exc:
            print(f"not a source: {name}: {exc}")
            continue
        out[name] = str(loaded.slices[0].Modality)
    return out


def test_the_real_sources_covered_are_all_that_load() -> None:
    loadable = _loadable()
    for name, modality in sorted(loadable.items()):
        print(f"covered: {modality} {name}")
    assert set(loadable) == {s for s in EXPECTED_SOURCES if s.split("/")[0] not in MISSING_COLLECTIONS}


def _model_like(volume: np.ndarray) -> np.ndarray:
    lo, hi = float(volume.min()), float(volume.max())
    return (volume - lo) / max(hi - lo, 1e-6) * 4095.0


@pytest.mark.parametrize(("name", "files"), REAL_SERIES, ids=[n for n, _ in REAL_SERIES])
def test_output_from_real_source_is_dciodvfy_clean(name: str, files: list[Path], tmp_path: Path) -> None:
    try:
        loaded = load_series(files, pixels=True)
    except SeriesReadError as exc:
        pytest.skip(f"the reader refuses it, so the service makes nothing from it: {exc}")
    assert loaded.volume is not None
    source_modality = str(loaded.slices[0].Modality)
    frames = loaded.frame_numbers if any(f is not None for f in loaded.frame_numbers) else None
    task = "pseudo_mri" if source_modality == "CT" else "brain_contrasts"
    if name in REFUSED_BY_BUILDER:
        with pytest.raises(ValueError, match=REFUSED_BY_BUILDER[name]):
            build(loaded.slices, _model_like(loaded.volume), task=task, source_frame_numbers=frames)
        print(f"refused: {name}: {REFUSED_BY_BUILDER[name]}")
        return
    # SeriesStore.put moves its file in: give it copies, never the real files themselves.
    store, copies = SeriesStore(tmp_path / "store"), tmp_path / "copies"
    copies.mkdir()
    staged = [Path(shutil.copy(f, copies / f"{i}.dcm")) for i, f in enumerate(files)]
    if name in REFUSED_BY_STORE:
        with pytest.raises(InvalidInstance, match=REFUSED_BY_STORE[name]):
            for f in staged:
                store.put(f)
        print(f"refused by the store: {name}")
        return
    for f in staged:
        store.put(f)  # the service accepts it
    assert all(f.exists() for f in files)
    # MR outputs are what the service makes; a CT output is checked as well for CT sources.
    for modality in ("MR", "CT") if source_modality == "CT" else ("MR",):
        out = build(loaded.slices, _model_like(loaded.volume), task=task, label="T1",
                    modality=modality, source_frame_numbers=frames)
        paths = write_series(out, tmp_path / modality)
        warnings: set[str] = set()
        for path in paths:
            errors, found = _dciodvfy(path)
            assert errors == [], f"{name} -> {modality} {path.name}:\n" + "\n".join(errors + found)
            warnings.update(found)
        for line in sorted(warnings):
            print(f"{name} -> {modality}: {line}")
        ds = dcmread(paths[0])
        assert claimed_acquisition(ds) == {}
        assert ds.FrameOfReferenceUID
        if not loaded.slices[0].get("FrameOfReferenceUID"):
            assert "no FrameOfReferenceUID" in ds.DerivationDescription
        print(f"covered: {name} ({source_modality}, {len(paths)} instances) -> {modality}: 0 errors, "
              f"{len(warnings)} distinct warnings")
