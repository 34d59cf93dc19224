"""Make a source value valid for its VR before it is copied into a new instance.

Real scanner files carry values their VR does not allow (ACR-NEMA times `11:11:11.111`,
dates `1990/01/`, a sex `N/A`, an age `22Y`, a 64-character StudyID). A value with an old
but unambiguous form is rewritten in the DICOM form; one that cannot be read, or is longer
than its VR allows, is left empty (the attributes copied this way are Type 2 or 3), so a
synthetic instance never inherits an invalid value. UIDs are never touched: they link the
output to its source.
"""

from __future__ import annotations

import re
from datetime import date

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import format_number_as_ds

_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DT = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")
_CS = re.compile(r"[A-Z0-9 _]{0,16}")
_ENUMERATED = {"PatientSex": {"M", "F", "O"}}
# Maximum value length (characters) of the text VRs (PS3.5 table 6.2-1).
_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "LO": 64, "SH": 16, "ST": 1024, "LT": 10240,
               "PN": 324}
# Copied as they are: the character set the strings are encoded in, and UIDs (the link).
_UNTOUCHED = {"SpecificCharacterSet"}


def _date(text: str) -> str | None:
    text = text.strip()
    old = re.fullmatch(r"(\d{4})[./-](\d{2})[./-](\d{2})", text)  # ACR-NEMA YYYY.MM.DD
    if old:
        text = "".join(old.groups())
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text


def _time(text: str) -> str | None:
    text = text.strip()
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", text):  # ACR-NEMA HH:MM:SS.frac
        text = text.replace(":", "")
    return text if _TM.fullmatch(text) else None


def _value(keyword: str, vr: str, text: str) -> str | None:
    """`text` in its valid form for `vr`, or None when it has none."""
    if vr == "DA":
        return _date(text)
    if vr == "TM":
        return _time(text)
    if vr == "DT":
        return text.strip() if _DT.fullmatch(text.strip()) else None
    if vr == "AS":
        m = re.fullmatch(r"(\d{1,3})([DWMY])", text.strip())
        return f"{int(m.group(1)):03d}{m.group(2)}" if m else None
    if vr == "DS" and len(text.strip()) > 16:  # too many digits: the same number, rounded to fit
        try:
            return format_number_as_ds(float(text))
        except (ValueError, OverflowError):
            return None
    if len(text) > _MAX_LENGTH.get(vr, len(text)):
        return None
    if vr == "CS":
        text = text.strip()
        allowed = _ENUMERATED.get(keyword)
        if allowed is not None:
            return text if text in allowed else None
        return text if _CS.fullmatch(text) else None
    return text


def clean_element(elem: DataElement) -> DataElement:
    """`elem` itself when its value is valid (or of a VR not checked here), else a copy
    with the value rewritten or emptied."""
    if elem.VR not in ("DA", "TM", "DT", *_MAX_LENGTH) or elem.keyword in _UNTOUCHED or elem.value in (None, ""):
        return elem
    values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
    cleaned = [_value(elem.keyword, elem.VR, str(v)) for v in values]
    if cleaned == [str(v) for v in values]:
        return elem
    kept = [v for v in cleaned if v is not None]
    value = None if not kept else kept[0] if len(kept) == 1 else kept
    return DataElement(elem.tag, elem.VR, value)
