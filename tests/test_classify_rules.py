"""Header rules on built headers: each vendor's conventions, each class, odd headers."""

import json
from pathlib import Path

import pytest
from pydicom import Dataset

from dicom_synth.classify import classify_series
from dicom_synth.classify.facts import extract_facts
from dicom_synth.classify.rules import RulesError, parse_rules

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VENDOR = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}


def header(vendor="siemens", region="breast", **kw) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.SOPClassUID = MR_STORAGE
    ds.Manufacturer = VENDOR[vendor]
    ds.MagneticFieldStrength = 3
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if region == "breast":
        ds.BodyPartExamined, ds.PatientPosition = "BREAST", "FFP"
    elif region == "brain":
        ds.BodyPartExamined, ds.PatientPosition = "BRAIN", "HFS"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def siemens_b(ds: Dataset, b: int) -> Dataset:
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100C), "IS", str(b))
    return ds


def ge_b(ds: Dataset, b: int) -> Dataset:
    ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
    ds.add_new((0x0043, 0x1039), "IS", [str(1000000000 + b), "8", "0", "0"])
    return ds


def philips_b(ds: Dataset, b: float) -> Dataset:
    ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    ds.add_new((0x2001, 0x1003), "FL", b)
    return ds


T1_GRE = dict(ScanningSequence="GR", SequenceVariant="SP", RepetitionTime=5.43, EchoTime=2.46, FlipAngle=20)
VIBE = dict(ScanningSequence="GR", SequenceVariant=["SP", "OSP"], ScanOptions="FS",
            RepetitionTime=4.66, EchoTime=1.62, FlipAngle=11)
TSE = dict(ScanningSequence="SE", SequenceVariant=["SK", "SP"], RepetitionTime=4500, EchoTime=85, FlipAngle=150)
EPI_DWI = dict(ScanningSequence="EP", SequenceVariant=["SK", "SP"], ScanOptions=["PFP", "FS"],
               RepetitionTime=5600, EchoTime=62, ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"])


def dce(tp: int, description="t1_fl3d_tra_dynaVIEWS_spair", vendor="siemens", **kw) -> Dataset:
    ds = header(vendor, SeriesDescription=description, TemporalPositionIdentifier=tp,
                NumberOfTemporalPositions=7, **{**VIBE, **kw})
    if tp > 1:
        ds.ContrastBolusAgent = "MultiHance"
    return ds


CASES = [
    # --- Siemens breast (the seed 000 protocol and its neighbours)
    ("siemens demo T1 FLASH non-FS", header(SeriesDescription="t1_fl3d_tra_nonfs", ScanOptions="", **T1_GRE),
     "breast_t1_nc"),
    ("siemens T2 TSE", header(SeriesDescription="t2_tse_tra", **TSE), "breast_t2"),
    ("siemens T2 TSE fat sat", header(SeriesDescription="t2_tse_tra_fs", ScanOptions="FS", **TSE), "breast_t2_fs"),
    ("siemens TIRM", header(SeriesDescription="t2_tirm_tra", ScanningSequence=["SE", "IR"], InversionTime=230,
                            RepetitionTime=5000, EchoTime=70), "breast_t2_fs"),
    ("siemens DWI b50", siemens_b(header(SeriesDescription="ep2d_diff_tra", **EPI_DWI), 50), "breast_dwi_low_b"),
    ("siemens DWI b800", siemens_b(header(SeriesDescription="ep2d_diff_tra", **EPI_DWI), 800), "breast_dwi_high_b"),
    ("siemens ADC", header(SeriesDescription="ep2d_diff_tra_ADC",
                           **{**EPI_DWI, "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}), "breast_adc"),
    ("siemens DCE mask", dce(1), "breast_dce_pre"),
    ("siemens DCE phase 2", dce(2), "breast_dce_early"),
    ("siemens DCE phase 5", dce(5), "breast_dce_late"),
    ("siemens subtraction", dce(2, "t1_fl3d_tra_dynaVIEWS_spair_SUB",
                                ImageType=["DERIVED", "PRIMARY", "SUBTRACT", "M", "ND"]), "breast_sub"),
    # --- GE breast
    ("GE Vibrant Ph1", header("ge", SeriesDescription="Ph1/Ax Vibrant MultiPhase", ScanOptions=["FAST_GEMS", "FS"],
                              ScanningSequence="GR", RepetitionTime=4.9, EchoTime=2.1, FlipAngle=10),
     "breast_dce_pre"),
    ("GE Vibrant Ph2", header("ge", SeriesDescription="Ph2/Ax Vibrant MultiPhase", ScanOptions=["FAST_GEMS", "FS"],
                              ScanningSequence="GR", RepetitionTime=4.9, EchoTime=2.1, FlipAngle=10,
                              ContrastBolusAgent="Gadavist"), "breast_dce_early"),
    ("GE T2 FSE", header("ge", SeriesDescription="Ax T2 FSE", **TSE), "breast_t2"),
    ("GE STIR", header("ge", SeriesDescription="Ax STIR", ScanningSequence="IR", InversionTime=160,
                       RepetitionTime=6000, EchoTime=60), "breast_t2_fs"),
    ("GE DWI b800", ge_b(header("ge", SeriesDescription="Ax DWI", **EPI_DWI), 800), "breast_dwi_high_b"),
    ("GE DWI b0", ge_b(header("ge", SeriesDescription="Ax DWI b0", **EPI_DWI), 0), "breast_dwi_low_b"),
    # --- Philips breast
    ("Philips T2W TSE", header("philips", SeriesDescription="T2W_TSE", **{**TSE, "ScanningSequence": "SE"}),
     "breast_t2"),
    ("Philips T2W SPAIR", header("philips", SeriesDescription="T2W_SPAIR", **TSE), "breast_t2_fs"),
    ("Philips DWI b1000", philips_b(header("philips", SeriesDescription="DWI_SSh", **EPI_DWI), 1000.0),
     "breast_dwi_high_b"),
    ("Philips ADC", header("philips", SeriesDescription="DWI_SSh_ADC",
                           **{**EPI_DWI, "ImageType": ["DERIVED", "PRIMARY", "ADC", "ADC"]}), "breast_adc"),
    ("Philips dyn pre (timing)", header("philips", SeriesDescription="dyn_eTHRIVE", ContrastBolusStartTime="101500",
                                        AcquisitionTime="101400", ContrastBolusAgent="Dotarem", ScanOptions="FS",
                                        ScanningSequence="GR", RepetitionTime=4.4, EchoTime=2.2), "breast_dce_pre"),
    ("Philips dyn early (timing)", header("philips", SeriesDescription="dyn_eTHRIVE", ContrastBolusStartTime="101500",
                                          AcquisitionTime="101610", ContrastBolusAgent="Dotarem", ScanOptions="FS",
                                          ScanningSequence="GR", RepetitionTime=4.4, EchoTime=2.2), "breast_dce_early"),
    ("Philips dyn late (timing)", header("philips", SeriesDescription="dyn_eTHRIVE", ContrastBolusStartTime="101500",
                                         AcquisitionTime="102100", ContrastBolusAgent="Dotarem", ScanOptions="FS",
                                         ScanningSequence="GR", RepetitionTime=4.4, EchoTime=2.2), "breast_dce_late"),
    ("Philips subtraction", header("philips", SeriesDescription="sub_dyn_eTHRIVE", ScanningSequence="GR",
                                   RepetitionTime=4.4, EchoTime=2.2), "breast_sub"),
    # --- brain
    ("siemens MPRAGE", header(region="brain", SeriesDescription="t1_mprage_sag", ScanningSequence=["GR", "IR"],
                              InversionTime=900, RepetitionTime=2300, EchoTime=2.3), "brain_t1"),
    ("siemens MPRAGE post", header(region="brain", SeriesDescription="t1_mprage_sag_post",
                                   ScanningSequence=["GR", "IR"], InversionTime=900, RepetitionTime=2300,
                                   EchoTime=2.3, ContrastBolusAgent="Gadovist"),
     "brain_t1c"),
    ("siemens brain T2", header(region="brain", SeriesDescription="t2_tse_tra", **TSE), "brain_t2"),
    ("siemens dark fluid", header(region="brain", SeriesDescription="t2_tirm_tra_dark-fluid",
                                  ScanningSequence=["SE", "IR"], InversionTime=2500, RepetitionTime=9000,
                                  EchoTime=81), "brain_flair"),
    ("GE T1 FLAIR", header("ge", region="brain", SeriesDescription="Ax T1 FLAIR", ScanningSequence=["SE", "IR"],
                           InversionTime=800, RepetitionTime=2200, EchoTime=12), "brain_t1"),
    ("GE Ax T1 +C", header("ge", region="brain", SeriesDescription="Ax T1 SE +C", ScanningSequence="SE",
                           RepetitionTime=550, EchoTime=10, ContrastBolusAgent="Gadavist"), "brain_t1c"),
    # --- out of scope
    ("knee", header(region=None, BodyPartExamined="KNEE", SeriesDescription="pd_tse_fs_sag", **TSE), "unknown"),
    ("localizer", header(SeriesDescription="localizer", **T1_GRE), "unknown"),
    ("Philips private SOP class", header("philips", SOPClassUID="1.3.46.670589.11.0.0.12.4",
                                         SeriesDescription="T2W_TSE", **TSE), "unknown"),
    ("no description, no body part", header(region=None, **T1_GRE), "unknown"),
    ("breast DWI with b50 and b800 in one series",
     siemens_b(header(SeriesDescription="ep2d_diff_tra", **EPI_DWI), 50), "unknown"),  # 2nd slice added below
]


@pytest.mark.parametrize(("name", "ds", "expected"), CASES, ids=[c[0] for c in CASES])
def test_vendor_conventions(name, ds, expected):
    slices = [ds]
    if name.startswith("breast DWI with b50 and b800"):
        slices.append(siemens_b(header(SeriesDescription="ep2d_diff_tra", **EPI_DWI), 800))
    result = classify_series(slices)
    assert result.label == expected, (result.label, result.evidence)
    json.dumps(result.evidence)  # the evidence must be storable as JSON
    if expected != "unknown":
        assert result.confidence >= 0.6


def test_demo_routes():
    t1 = classify_series([header(SeriesDescription="t1_fl3d_tra_nonfs", ScanOptions="", **T1_GRE)])
    t2 = classify_series([header(SeriesDescription="t2_tse_tra", **TSE)])
    assert (t1.label, t1.route) == ("breast_t1_nc", "dce_phase1")
    assert (t2.label, t2.route) == ("breast_t2", None)


def test_ct_regions_from_headers():
    def ct(**kw):
        ds = Dataset()
        ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    assert classify_series([ct(BodyPartExamined="CHEST")]).label == "ct_chest"
    assert classify_series([ct(BodyPartExamined="HEAD", SeriesDescription="Head 5mm")]).route == "pseudo_mri"
    assert classify_series([ct(StudyDescription="CT ABDOMEN PELVIS W", SeriesDescription="Abd 3mm")]).label \
        == "ct_abdomen_pelvis"
    assert classify_series([ct(SeriesDescription="CAP 5mm", BodyPartExamined="CHEST")]).label == "unknown"


def test_dce_phase_from_several_temporal_positions_in_one_series_is_unknown():
    result = classify_series([dce(1), dce(2), dce(3)])
    assert result.label == "unknown"
    assert result.evidence["facts"]["Phase"] == "multi"


def test_enhanced_multiframe_read_per_frame():
    ds = header(SeriesDescription="t2_tse_tra")
    timing = Dataset()
    timing.RepetitionTime = 4500
    echo = Dataset()
    echo.EffectiveEchoTime = 90.0
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = [timing]
    shared.MREchoSequence = [echo]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [Dataset(), Dataset()]
    facts = extract_facts([ds])
    assert facts["NumberOfSlices"] == 2
    assert (facts["RepetitionTime"], facts["EchoTime"]) == (4500, 90.0)
    assert classify_series([ds]).label == "breast_t2"


@pytest.mark.parametrize(
    "slices",
    [[], [Dataset()], [header(RepetitionTime="", EchoTime=None)], [header(ImageOrientationPatient=[1, 0])]],
)
def test_odd_headers_give_unknown_not_errors(slices):
    result = classify_series(slices)
    assert result.label == "unknown" and result.route is None
    json.dumps(result.evidence)


def test_rules_file_errors_name_the_rule(tmp_path: Path):
    with pytest.raises(RulesError, match="'r1'.*matches no label"):
        parse_rules({"rules": [{"id": "r1", "votes": {"breast_t9": 1}}]})
    with pytest.raises(RulesError, match="'r2'.*bad regex"):
        parse_rules({"rules": [{"id": "r2", "when": {"Text": "("}, "votes": {"breast_*": 1}}]})


def test_user_rules_file_changes_the_answer(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "priors: {unknown: 1}\nrules:\n"
        "  - id: site_convention\n    when: {Text: ' mysite t1 '}\n    votes: {breast_t1_nc: 5}\n"
    )
    ds = header(region=None, SeriesDescription="MYSITE_T1")
    assert classify_series([ds]).label == "unknown"
    assert classify_series([ds], rules_path=path).label == "breast_t1_nc"
