"""Vendor-styled headers for phantom series (Siemens, GE, Philips conventions), degraded the
way real archives are: descriptions and body parts missing, contrast and timing fields
absent, a few descriptions wrong (about 10 % are wrong in one published audit; 4 % here,
on top of the missing ones). The header rules are evaluated on these.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_synth.classify.labels import UNKNOWN

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

VENDORS = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}

# label -> vendor -> (descriptions, ScanningSequence, ScanOptions, (TR range), (TE range), TI or None)
_MR_PROTOCOLS: dict[str, dict[str, tuple]] = {
    "breast_t1_nc": {
        "siemens": (["t1_fl3d_tra_nonfs", "t1_fl3d_tra", "t1_fl3d_tra_nonFS_p3"], "GR", "", (4.5, 8), (2, 4.8), None),
        "ge": (["Ax T1 NON FS", "Ax 3D T1 nonfs", "AX T1 3D"], "GR", "FAST_GEMS", (4.5, 8), (2, 4.5), None),
        "philips": (["T1W_3D_FFE", "T1_FFE_nonFS", "T1W_FFE"], "GR", "", (4.5, 8), (2, 4.6), None),
    },
    "breast_t2": {
        "siemens": (["t2_tse_tra", "t2_tse_tra_p2", "t2_tse_ax"], "SE", "", (3000, 6000), (70, 110), None),
        "ge": (["Ax T2 FSE", "AX T2", "Ax T2 FRFSE"], "SE", "FAST_GEMS", (3000, 6000), (70, 110), None),
        "philips": (["T2W_TSE", "T2W_TSE_ax", "T2_TSE"], "SE", "", (3000, 6000), (70, 110), None),
    },
    "breast_t2_fs": {
        "siemens": (["t2_tirm_tra", "t2_tse_tra_fs", "t2_tse_spair_tra"], "SE", "FS", (3500, 7000), (60, 90), "tirm"),
        "ge": (["Ax STIR", "Ax T2 FS", "AX T2 FSE FS"], "SE", "FAST_GEMS\\FS", (3500, 7000), (60, 90), "stir"),
        "philips": (["T2W_SPAIR", "STIR_TSE", "T2W_TSE_SPAIR"], "SE", "FS", (3500, 7000), (60, 90), "stir"),
    },
    "breast_dwi_low_b": {
        "siemens": (["ep2d_diff_tra", "resolve_diff_tra", "ep2d_diff_b50"],
                "EP", "PFP\\FS", (4000, 9000), (55, 90), None),
        "ge": (["Ax DWI", "AX DWI b0", "Ax DWI ASSET"], "EP", "EPI_GEMS\\FS", (4000, 9000), (55, 90), None),
        "philips": (["DWI_SSh", "DWI_b0", "DWIBS"], "EP", "FS", (4000, 9000), (55, 90), None),
    },
    "breast_dce_pre": {
        "siemens": (["t1_fl3d_tra_dynaVIEWS_spair", "t1_vibe_fs_tra_dyn", "t1_fl3d_tra_spair_pre"],
                "GR", "FS", (3.5, 6), (1.3, 2.5), None),
        "ge": (["Ph1/Ax Vibrant MultiPhase", "Ax Vibrant pre", "Ph1/Ax VIBRANT"],
                "GR", "FAST_GEMS\\FS", (3.5, 6), (1.3, 2.5), None),
        "philips": (["dyn_eTHRIVE", "DYN_THRIVE_pre", "eTHRIVE_dyn"], "GR", "FS", (3.5, 6), (1.3, 2.5), None),
    },
    "breast_sub": {
        "siemens": (["t1_fl3d_tra_dynaVIEWS_spair_SUB", "SUB_t1_vibe_dyn", "t1_dyn_SUB"],
                "GR", "FS", (3.5, 6), (1.3, 2.5), None),
        "ge": (["SUB Ph2/Ax Vibrant", "Ax Vibrant SUB", "SUB Ph3"], "GR", "FAST_GEMS\\FS", (3.5, 6), (1.3, 2.5), None),
        "philips": (["sub_dyn_eTHRIVE", "SUB_DYN", "dyn_eTHRIVE_sub"], "GR", "FS", (3.5, 6), (1.3, 2.5), None),
    },
    "brain_t1": {
        "siemens": (["t1_mprage_sag", "t1_se_tra", "t1_mprage_tra_p2"],
                "GR\\IR", "", (1900, 2300), (2, 4), (800, 1100)),
        "ge": (["Sag 3D BRAVO", "Ax T1 SE", "Ax T1 FLAIR"], "GR", "FAST_GEMS", (6, 9), (2, 4), (400, 900)),
        "philips": (["T1W_3D_TFE", "T1W_SE", "3D_T1_TFE"], "GR", "", (6, 9), (2, 4), None),
    },
    "brain_t2": {
        "siemens": (["t2_tse_tra", "t2_tse_tra_p2", "t2_blade_tra"], "SE", "", (4000, 7000), (80, 110), None),
        "ge": (["Ax T2 FSE", "Ax T2 PROPELLER", "AX T2"], "SE", "FAST_GEMS", (4000, 7000), (80, 110), None),
        "philips": (["T2W_TSE", "T2W_TSE_tra", "T2_TSE"], "SE", "", (4000, 7000), (80, 110), None),
    },
    "brain_flair": {
        "siemens": (["t2_tirm_tra_dark-fluid", "t2_flair_tra", "t2_spc_da-fl_sag"],
                "SE\\IR", "", (8000, 10000), (80, 120), (2300, 2600)),
        "ge": (["Ax T2 FLAIR", "Sag 3D FLAIR", "AX FLAIR"],
                "SE\\IR", "FAST_GEMS", (8000, 10000), (80, 120), (2300, 2600)),
        "philips": (["FLAIR_longTR", "T2W_FLAIR", "3D_FLAIR"], "SE\\IR", "", (8000, 10000), (80, 120), (2300, 2600)),
    },
}
_MR_PROTOCOLS["breast_dwi_high_b"] = _MR_PROTOCOLS["breast_dwi_low_b"]
_MR_PROTOCOLS["breast_adc"] = {
    "siemens": (["ep2d_diff_tra_ADC", "resolve_diff_tra_ADC"], "EP", "PFP\\FS", (4000, 9000), (55, 90), None),
    "ge": (["ADC (10^-6 mm²/s):Ax DWI", "Apparent Diffusion Coefficient"],
            "EP", "EPI_GEMS\\FS", (4000, 9000), (55, 90), None),
    "philips": (["dADC_DWI_SSh", "DWI_SSh_ADC"], "EP", "FS", (4000, 9000), (55, 90), None),
}
_MR_PROTOCOLS["breast_dce_early"] = _MR_PROTOCOLS["breast_dce_pre"]
_MR_PROTOCOLS["breast_dce_late"] = _MR_PROTOCOLS["breast_dce_pre"]
_MR_PROTOCOLS["brain_t1c"] = {
    "siemens": (["t1_mprage_sag_post", "t1_se_tra_KM", "t1_mprage_tra_Gd"],
            "GR\\IR", "", (1900, 2300), (2, 4), (800, 1100)),
    "ge": (["Sag 3D BRAVO +C", "Ax T1 SE +C", "AX T1 POST"], "GR", "FAST_GEMS", (6, 9), (2, 4), (400, 900)),
    "philips": (["T1W_3D_TFE_Gd", "T1W_SE_post", "3D_T1_TFE_ce"], "GR", "", (6, 9), (2, 4), None),
}
_OTHER_MR = [
    ("KNEE", "pd_tse_fs_sag", "SE", (2500, 3500), (30, 40)),
    ("LSPINE", "t2_tse_sag", "SE", (3000, 4000), (90, 110)),
    ("ABDOMEN", "t1_vibe_dixon_tra", "GR", (4, 6), (1.2, 2.5)),
    ("", "localizer", "GR", (8, 9), (3, 4)),
    ("HEAD", "ep2d_diff_tra_brain", "EP", (5000, 7000), (60, 90)),
    ("SHOULDER", "pd_tse_fs_cor", "SE", (2500, 3500), (30, 40)),
]
_CT_DESCRIPTIONS = {
    "ct_head_neck": (["HEAD", "NECK", "BRAIN", ""], ["Head 5mm", "Neck 3mm", "CT HEAD W/O", "Brain H31s"]),
    "ct_chest": (["CHEST", "THORAX", ""], ["Thorax 1.5 B70f", "CHEST 5mm", "Lung 1mm", "CT CHEST W"]),
    "ct_abdomen_pelvis": (["ABDOMEN", "PELVIS", "ABD PELVIS", ""],
            ["Abdomen 5mm", "ABD/PEL 3mm", "Venous 3mm", "Becken"]),
}


def _uid(*parts: object) -> str:
    return generate_uid(prefix="1.2.826.0.1.3680043.10.543.", entropy_srcs=[str(p) for p in parts])


def make_headers(label: str, info: dict, volume: np.ndarray, rng: np.random.Generator, seed: int,
                 degrade: bool = True) -> list[Dataset]:
    """Vendor-styled slice headers for a phantom series, degraded like real archives."""
    vendor = str(rng.choice(list(VENDORS)))
    n, rows, cols = volume.shape
    fov = float(info.get("fov", 350.0))
    region = label.split("_")[0]
    is_ct = label.startswith("ct_") or info.get("modality") == "CT"
    base = Dataset()
    base.Modality = "CT" if is_ct else "MR"
    base.SOPClassUID = CT_STORAGE if is_ct else MR_STORAGE
    base.Manufacturer = VENDORS[vendor]
    base.SeriesInstanceUID = _uid("series", seed)
    base.StudyInstanceUID = _uid("study", seed)
    base.Rows, base.Columns = rows, cols
    base.PixelSpacing = [round(fov / cols, 4)] * 2
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if is_ct else "M", "NONE"]
    drop_description = degrade and rng.random() < 0.15
    drop_body_part = degrade and rng.random() < 0.3
    wrong_description = degrade and rng.random() < 0.04
    drop_timing = degrade and rng.random() < 0.3
    drop_contrast = degrade and rng.random() < 0.3
    desc = ""
    if is_ct:
        parts, descs = _CT_DESCRIPTIONS.get(label, (["", "EXTREMITY", "PHANTOM"], ["Knee 1mm", "QA water", "Legs"]))
        body_part = str(rng.choice(parts))
        desc = str(rng.choice(descs))
        if info.get("contrast_hu"):
            base.ContrastBolusAgent = "Omnipaque 350"
    elif label in _MR_PROTOCOLS:
        descs, ss, so, tr, te, ti = _MR_PROTOCOLS[label][vendor]
        desc = str(rng.choice(descs))
        if label in ("breast_dce_early", "breast_dce_late"):
            desc = desc.replace("_pre", "").replace(" pre", " post")
        base.ScanningSequence = ss
        base.SequenceVariant = "SP" if ss.startswith("GR") else "SK"
        base.ScanOptions = so
        base.RepetitionTime = round(float(rng.uniform(*tr)), 2)
        base.EchoTime = round(float(rng.uniform(*te)), 2)
        if ti == "tirm" or ti == "stir":
            base.ScanningSequence = "SE\\IR" if vendor == "siemens" else "IR"
            base.InversionTime = round(float(rng.uniform(150, 240)), 1)
            if rng.random() < 0.5 and "spair" not in desc.lower() and "fs" not in desc.lower():
                base.ScanOptions = "IR"
        elif isinstance(ti, tuple) and ("mprage" in desc.lower() or "flair" in desc.lower()
                                        or label == "brain_flair"):
            base.InversionTime = round(float(rng.uniform(*ti)), 1)
        base.FlipAngle = 20 if label == "breast_t1_nc" else 11 if label.startswith("breast_dce") else 90
        base.MagneticFieldStrength = float(rng.choice([1.5, 3.0]))
        body_part = {"breast": "BREAST", "brain": "BRAIN"}.get(region, "")
        base.PatientPosition = "FFP" if region == "breast" and rng.random() < 0.5 else (
            "HFP" if region == "breast" else "HFS")
        if label.startswith("breast_dwi") or label == "breast_adc":
            base.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
            if label == "breast_adc":
                base.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
        if label == "breast_sub":
            base.ImageType = ["DERIVED", "PRIMARY", "SUBTRACT", "M"] if rng.random() < 0.7 else base.ImageType
        if label in ("breast_dce_early", "breast_dce_late", "brain_t1c", "breast_sub") and not drop_contrast:
            base.ContrastBolusAgent = str(rng.choice(["Gadovist", "MultiHance", "Dotarem"]))
    else:  # unknown MR
        body_part, desc, ss, tr, te = _OTHER_MR[int(rng.integers(len(_OTHER_MR)))]
        base.ScanningSequence = ss
        base.RepetitionTime = round(float(rng.uniform(*tr)), 2)
        base.EchoTime = round(float(rng.uniform(*te)), 2)
        base.PatientPosition = "HFS"
        if ss == "EP":
            base.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    if wrong_description and not is_ct:
        desc = str(rng.choice(["t1_fl3d_tra", "t2_tse_tra", "Ax DWI", "SERIES 5", "t1_vibe", "T2W_TSE"]))
    if desc and not drop_description:
        base.SeriesDescription = desc
        base.ProtocolName = desc
    if body_part and not drop_body_part:
        base.BodyPartExamined = body_part
    start = dt.datetime(2024, 3, 1, 9, 0) + dt.timedelta(minutes=int(seed % 300))
    phase = {"breast_dce_pre": 1, "breast_dce_early": 2, "breast_dce_late": int(rng.integers(4, 7))}.get(label)
    headers = []
    for k in range(n):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = _uid("sop", seed, k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-fov / 2, -fov / 2, float(k) * 3]
        is_dwi = label in ("breast_dwi_low_b", "breast_dwi_high_b")
        if is_dwi or (label == UNKNOWN and ds.get("ScanningSequence") == "EP"):
            b = float(info.get("b", 0.0 if label == "breast_dwi_low_b" else 800.0))
            if vendor == "siemens":
                ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
                ds.add_new((0x0019, 0x100C), "IS", str(int(b)))
            elif vendor == "ge":
                ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
                ds.add_new((0x0043, 0x1039), "IS", [str(1_000_000_000 + int(b)), "8", "0", "0"])
            else:
                ds.DiffusionBValue = b
        if phase is not None and not drop_timing:
            per_phase_s = 90.0
            if vendor == "philips":
                bolus = start + dt.timedelta(seconds=per_phase_s)
                ds.ContrastBolusStartTime = bolus.strftime("%H%M%S")
                acq = start + dt.timedelta(seconds=per_phase_s * (phase - 1) + 45)
                ds.AcquisitionTime = acq.strftime("%H%M%S")
            else:
                ds.TemporalPositionIdentifier = phase
                ds.NumberOfTemporalPositions = 7
        if phase is not None and vendor == "ge" and "SeriesDescription" in ds:
            ds.SeriesDescription = ds.SeriesDescription.replace("Ph1", f"Ph{phase}")
        headers.append(ds)
    return headers
