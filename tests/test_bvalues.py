"""DWI b-values from the standard tag and each vendor's private tag (seed 001)."""


import pydicom
import pytest
from pydicom import Dataset

from dicom_synth.classify.bvalues import series_bvalues, slice_bvalue
from dicom_synth.classify.facts import extract_facts
from tests.conftest import REALDATA as REAL


def _read(rel: str) -> Dataset:
    return pydicom.dcmread(REAL / rel, stop_before_pixels=True)


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("nibabel/siemens_dwi_0.dcm", 0.0),
        ("nibabel/siemens_dwi_1000.dcm", 1000.0),
        ("heudiconv/b0dwiForFmap/b0dwi_for_fmap+00001.dcm", 5.0),
        ("heudiconv/b0dwiForFmap/b0dwi_for_fmap+00002.dcm", 5.0),
        ("heudiconv/b0dwiForFmap/b0dwi_for_fmap+00003.dcm", 1500.0),
    ],
)
def test_real_siemens_files(rel, expected):
    bv = slice_bvalue(_read(rel))
    assert bv is not None and bv.value == expected and bv.source == "siemens"


def test_real_series_facts():
    facts = extract_facts([_read(f"heudiconv/b0dwiForFmap/b0dwi_for_fmap+0000{i}.dcm") for i in (1, 2, 3)])
    assert facts["BValues"] == [5.0, 1500.0]
    assert facts["DiffusionEvidence"] is True
    assert facts["BValueClass"] == "mixed"
    assert extract_facts([_read("nibabel/siemens_dwi_1000.dcm")])["BValueClass"] == "high"
    assert extract_facts([_read("nibabel/siemens_dwi_0.dcm")])["BValueClass"] == "low"


def test_non_diffusion_real_files_have_no_bvalues():
    for rel in ("pydicom_data/MR2_UNCR.dcm", "heudiconv/phantom.dcm", "nibabel/csa_slice_norm.dcm"):
        assert "BValues" not in extract_facts([_read(rel)]), rel


def _mr(**kw) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_standard_tag_wins_over_private():
    ds = _mr(DiffusionBValue=800.0)
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100C), "IS", "50")
    bv = slice_bvalue(ds)
    assert (bv.value, bv.source) == (800.0, "standard")


def test_enhanced_per_frame_bvalues():
    ds = _mr(ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"])
    frames = []
    for b in (0.0, 50.0, 800.0):
        diff = Dataset()
        diff.DiffusionBValue = b
        item = Dataset()
        item.MRDiffusionSequence = [diff]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    facts = extract_facts([ds])
    assert facts["BValues"] == [0.0, 50.0, 800.0]


def test_ge_first_value_modulo_only_with_diffusion_evidence():
    def ge(**kw):
        ds = _mr(Manufacturer="GE MEDICAL SYSTEMS", **kw)
        ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
        ds.add_new((0x0043, 0x1039), "IS", ["1000000800", "8", "0", "0"])
        return ds

    bv = slice_bvalue(ge())
    assert (bv.value, bv.source, bv.needs_evidence) == (800.0, "ge", True)
    # a GE T2 carries the tag too: no diffusion evidence, no b-values
    assert series_bvalues([ge()], diffusion_evidence=False) == ([], [])
    t2 = extract_facts([ge(SeriesDescription="Ax T2 FSE", ScanningSequence="SE", EchoTime=90)])
    assert "BValues" not in t2 and t2["DiffusionEvidence"] is False
    dwi = extract_facts([ge(SeriesDescription="Ax DWI", ScanningSequence=["EP", "SE"])])
    assert dwi["BValues"] == [800.0] and dwi["DiffusionEvidence"] is True


def test_philips_tiny_b0_codes_are_zero():
    values = []
    for b in (0.001, 0.002, 1000.0):
        ds = _mr(Manufacturer="Philips Medical Systems")
        ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
        ds.add_new((0x2001, 0x1003), "FL", b)
        values.append(ds)
    assert series_bvalues(values, diffusion_evidence=False)[0] == [0.0, 1000.0]


def test_private_tag_of_another_creator_is_ignored():
    ds = _mr()
    ds.add_new((0x0019, 0x0010), "LO", "SOMEONE ELSE")
    ds.add_new((0x0019, 0x100C), "IS", "1000")
    assert slice_bvalue(ds) is None


def test_undecoded_un_bytes_are_read():
    ds = _mr()
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100C), "UN", b"1000")
    assert slice_bvalue(ds).value == 1000.0
