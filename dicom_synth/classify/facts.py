"""Header facts of a series: one flat dict the declarative rules (`rules.yaml`) test.

Pure and defensive: a missing, empty or malformed attribute gives a missing fact, never
an exception. Enhanced multi-frame objects are read per frame (functional groups,
per-frame first, then shared), whether or not the caller split them already.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator, Sequence

from pydicom import Dataset

from dicom_synth.classify.bvalues import series_bvalues

Facts = dict[str, object]

_VENDORS = (("siemens", "siemens"), ("ge", r"\bge\b|general electric|gems"), ("philips", "philips"))
_DIFFUSION_TEXT = re.compile(r"\b(dwi|diff\w*|dti|ep2d diff|resolve|trace\w*|adc|b\d{2,4})\b")


def _frames(ds: Dataset) -> Iterator[tuple[Dataset, Dataset | None, Dataset | None]]:
    """(top-level header, per-frame group item, shared group item) for every frame."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        for item in per_frame:
            yield ds, item, shared
    else:
        yield ds, None, shared


def _lookup(frame: tuple[Dataset, Dataset | None, Dataset | None], keyword: str) -> object | None:
    top, per_frame, shared = frame
    try:
        if keyword in top:
            value = top[keyword].value
            if value not in (None, ""):
                return value
        for group in (per_frame, shared):
            if group is None:
                continue
            for elem in group:
                if elem.VR == "SQ" and elem.value:
                    item = elem.value[0]
                    if keyword in item:
                        value = item[keyword].value
                        if value not in (None, ""):
                            return value
    except Exception:
        return None
    return None


def _float(value: object) -> float | None:
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = list(value)[0]  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None


def _tokens(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip().upper() for t in value.split("\\") if t.strip()]
    try:
        return [str(t).strip().upper() for t in value if str(t).strip()]  # type: ignore[union-attr]
    except TypeError:
        return [str(value).strip().upper()]


def _time_seconds(value: object) -> float | None:
    """Seconds since midnight from a DICOM TM (`HHMMSS.ffffff`, `HH:MM:SS`) or DT."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS...
        text = text[8:]
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        return None
    h, m, s, frac = match.groups()
    return int(h) * 3600 + int(m or 0) * 60 + int(s or 0) + float(frac or 0)


def normalise_text(*parts: object) -> str:
    """Lower case, every non-alphanumeric run a single space, padded: `t1_fl3d_tra_nonfs`
    becomes ` t1 fl3d tra nonfs ` so rules can use word boundaries."""
    text = " ".join(str(p) for p in parts if p)
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def _orientation(value: object) -> str | None:
    try:
        v = [float(x) for x in value]  # type: ignore[union-attr]
        row, col = v[:3], v[3:6]
        n = [
            row[1] * col[2] - row[2] * col[1],
            row[2] * col[0] - row[0] * col[2],
            row[0] * col[1] - row[1] * col[0],
        ]
    except (TypeError, ValueError, IndexError):
        return None
    a = [abs(x) for x in n]
    axis = max(range(3), key=lambda i: a[i])
    if a[axis] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _numbers(frames: list, keyword: str) -> list[float]:
    out = []
    for f in frames:
        v = _float(_lookup(f, keyword))
        if v is not None:
            out.append(v)
    return out


def _first_text(frames: list, keyword: str) -> str:
    for f in frames[:1] + frames[-1:]:
        v = _lookup(f, keyword)
        if v not in (None, ""):
            return str(v).strip()
    return ""


def _contrast_agent(frames: list) -> bool:
    for f in frames[:1]:
        for kw in ("ContrastBolusAgent", "ContrastBolusStartTime", "ContrastBolusVolume",
                   "ContrastBolusIngredient", "ContrastBolusTotalDose"):
            v = _lookup(f, kw)
            if v not in (None, "") and str(v).strip() not in ("", "0", "NONE", "None"):
                return True
        seq = _lookup(f, "ContrastBolusAgentSequence")
        if seq:
            return True
    return False


def _phase(frames: list, text: str, settings: dict) -> tuple[str | None, dict]:
    """DCE phase of the series: `pre`, `early`, `late` or `multi`, with how it was found."""
    info: dict = {}
    early_max = float(settings.get("early_max_seconds", 180))
    positions = sorted({int(v) for v in _numbers(frames, "TemporalPositionIdentifier")})
    if not positions:
        positions = sorted({int(v) for v in _numbers(frames, "TemporalPositionIndex")})
    n_positions = _float(_first_text(frames, "NumberOfTemporalPositions"))
    info["temporal_positions"] = positions[:20]
    bolus = _time_seconds(_first_text(frames, "ContrastBolusStartTime"))
    acq_times = [
        t for t in (
            _time_seconds(_lookup(f, "AcquisitionTime") or _lookup(f, "FrameAcquisitionDateTime")
                          or _lookup(f, "AcquisitionDateTime"))
            for f in frames
        ) if t is not None
    ]
    if len(positions) > 1:
        info["source"] = "TemporalPositionIdentifier"
        return "multi", info
    triggers = sorted({round(v) for v in _numbers(frames, "TriggerTime")})
    if len(triggers) > 1 and re.search(r" (dyn\w*|multiphase|vibrant|thrive|twist|dce) ", text):
        info["source"], info["trigger_times_ms"] = "TriggerTime", triggers[:20]
        return "multi", info
    if bolus is not None and acq_times:
        delta = min(acq_times) - bolus
        if delta < -12 * 3600:  # acquired after midnight
            delta += 24 * 3600
        info["source"], info["seconds_after_bolus"] = "ContrastBolusStartTime", round(delta, 1)
        if delta < 0:
            return "pre", info
        return ("early" if delta <= early_max else "late"), info
    index = positions[0] if positions and (n_positions or 0) > 1 else None
    if index is None:
        match = re.search(r" ph(\d{1,2}) ", text) or re.search(r" phase (\d{1,2}) ", text)
        if match:
            index, info["source"] = int(match.group(1)), "description"
    else:
        info["source"] = "TemporalPositionIdentifier"
    if index is not None:
        info["phase_index"] = index
        return ("pre" if index <= 1 else "early" if index == 2 else "late"), info
    return None, info


def extract_facts(slices: Sequence[Dataset], settings: dict | None = None) -> Facts:
    """Flat facts of a series from its slice headers. Never raises."""
    settings = settings or {}
    frames = [f for ds in slices for f in _frames(ds)]
    facts: Facts = {"NumberOfSlices": len(frames)}
    if not frames:
        return facts
    first = frames[0]
    for kw in ("Modality", "Manufacturer", "SOPClassUID", "SeriesDescription", "ProtocolName",
               "StudyDescription", "BodyPartExamined", "SequenceName", "PulseSequenceName",
               "PatientPosition", "EchoPulseSequence", "AcquisitionContrast", "InversionRecovery",
               "SpectrallySelectedSuppression", "SpectrallySelectedExcitation", "ReceiveCoilName",
               "MRAcquisitionType", "ConvolutionKernel"):
        value = _first_text(frames, kw)
        if value:
            facts[kw] = value
    manufacturer = str(facts.get("Manufacturer", "")).lower()
    facts["Vendor"] = next((name for name, pat in _VENDORS if re.search(pat, manufacturer)), "other")
    for kw in ("ImageType", "ScanningSequence", "SequenceVariant", "ScanOptions"):
        tokens: list[str] = []
        for f in frames[:1] + frames[-1:]:
            tokens += [t for t in _tokens(_lookup(f, kw)) if t not in tokens]
        if kw == "ImageType":
            for f in frames[:1] + frames[-1:]:
                tokens += [t for t in _tokens(_lookup(f, "FrameType")) if t not in tokens]
        facts[kw] = tokens
    for kw in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "MagneticFieldStrength",
               "SliceThickness"):
        value = _median(_numbers(frames, kw))
        if value is None and kw == "EchoTime":
            value = _median(_numbers(frames, "EffectiveEchoTime"))
        if value is None and kw == "InversionTime":
            value = _median(_numbers(frames, "InversionTimes"))
        if value is not None:
            facts[kw] = round(value, 4)
    coil = _lookup(first, "ReceiveCoilName") or _siemens_coil(first[0])
    if coil:
        facts["ReceiveCoilName"] = str(coil)
    orient = _orientation(_lookup(first, "ImageOrientationPatient"))
    if orient:
        facts["Orientation"] = orient
    spacing = _lookup(first, "PixelSpacing")
    rows, cols = _float(_lookup(first, "Rows")), _float(_lookup(first, "Columns"))
    if spacing is not None and cols:
        try:
            facts["FieldOfViewMM"] = round(float(spacing[1]) * cols, 1)  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            pass
    if rows and cols:
        facts["Rows"], facts["Columns"] = int(rows), int(cols)
    text = normalise_text(facts.get("SeriesDescription"), facts.get("ProtocolName"),
                          facts.get("SequenceName"), facts.get("PulseSequenceName"))
    facts["Text"] = text
    facts["StudyText"] = normalise_text(facts.get("StudyDescription"), facts.get("BodyPartExamined"),
                                        facts.get("ReceiveCoilName"))
    facts["ContrastAgent"] = _contrast_agent(frames)
    facts["PatientProne"] = str(facts.get("PatientPosition", "")).upper() in ("HFP", "FFP")
    image_type = facts["ImageType"]
    diffusion = (
        any(t in ("DIFFUSION", "ADC", "TRACEW", "TRACE", "EADC", "FA") for t in image_type)  # type: ignore[operator]
        or facts.get("AcquisitionContrast", "").upper() == "DIFFUSION"  # type: ignore[union-attr]
        or "EP" in facts["ScanningSequence"] and bool(_DIFFUSION_TEXT.search(text))  # type: ignore[operator]
        or any(_lookup(f, "MRDiffusionSequence") for f in frames[:1])
    )
    bvalues, sources = series_bvalues([f[0] for f in frames] if not any(f[1] for f in frames)
                                      else _flat_frames(frames), diffusion)
    if bvalues and ("siemens" in sources or "standard" in sources and max(bvalues) > 0
                    or "philips" in sources and max(bvalues) > 0):
        diffusion = True
    facts["DiffusionEvidence"] = bool(diffusion)
    if bvalues:
        facts["BValues"] = bvalues[:32]
        facts["BValueSources"] = sources
        facts["BValueMax"], facts["BValueMin"] = max(bvalues), min(bvalues)
        high = float(settings.get("dwi_high_b_min", 400))
        facts["BValueClass"] = (
            "high" if min(bvalues) >= high else "low" if max(bvalues) < high else "mixed"
        )
    phase, phase_info = _phase(frames, text, settings)
    if phase:
        facts["Phase"] = phase
    facts["PhaseInfo"] = phase_info
    return facts


def _flat_frames(frames: list) -> list[Dataset]:
    """Per-frame b-value carriers for an unsplit enhanced object."""
    out = []
    for f in frames:
        ds = Dataset()
        value = _lookup(f, "DiffusionBValue")
        if value is not None:
            ds.DiffusionBValue = value
        out.append(ds)
    return out


def _siemens_coil(ds: Dataset) -> str | None:
    try:
        elem = ds.get((0x0051, 0x100F))
        if elem is None:
            return None
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("latin-1", errors="ignore")
        return str(value).strip("\x00 ") or None
    except Exception:
        return None
