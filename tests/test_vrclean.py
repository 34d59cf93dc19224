"""Source values invalid for their VR are rewritten in the DICOM form or emptied, never copied."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from dicom_synth.vrclean import clean_element


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "expected"),
    [
        ("StudyTime", "TM", "11:11:11.111", "111111.111"),  # ACR-NEMA time
        ("StudyTime", "TM", "101500", "101500"),
        ("StudyTime", "TM", "25h", None),
        ("StudyDate", "DA", "1990.01.02", "19900102"),  # ACR-NEMA date
        ("PatientBirthDate", "DA", "1990/01/", None),
        ("StudyDate", "DA", "20240231", None),  # no 31 February
        ("StudyDate", "DA", "20240102", "20240102"),
        ("AcquisitionDateTime", "DT", "20240102101500.5+0100", "20240102101500.5+0100"),
        ("AcquisitionDateTime", "DT", "2024-01-02", None),
        ("PatientSex", "CS", "N/A", None),
        ("PatientSex", "CS", "F", "F"),
        ("BodyPartExamined", "CS", "head", None),
        ("PatientAge", "AS", "22Y", "022Y"),
        ("PatientAge", "AS", "054Y", "054Y"),
        ("PatientAge", "AS", "old", None),
        ("StudyID", "SH", "d6e895774587360288a394441a225639", None),  # longer than SH allows
        ("StudyID", "SH", "S1", "S1"),
        ("StudyDescription", "LO", "MR BRAIN", "MR BRAIN"),
        ("SliceThickness", "DS", "0.48828125", "0.48828125"),
    ],
)
def test_value_is_made_valid_or_emptied(keyword: str, vr: str, value: str, expected: str | None) -> None:
    elem = DataElement(tag_for_keyword(keyword), vr, value)
    cleaned = clean_element(elem)
    assert cleaned.value == expected or (expected is None and cleaned.value in (None, ""))
    if expected == value:
        assert cleaned is elem  # valid values are copied as they are


def test_invalid_values_of_a_multi_valued_element_are_dropped() -> None:
    elem = DataElement(0x00080008, "CS", MultiValue(str, ["DERIVED", "bad/value", "SYNTHETIC"]))
    assert list(clean_element(elem).value) == ["DERIVED", "SYNTHETIC"]


def test_a_decimal_with_too_many_digits_is_rounded_to_fit_not_emptied() -> None:
    elem = DataElement(0x00280030, "DS", ["0.488281250000000001", "0.48828125"], validation_mode=0)
    spacing = clean_element(elem).value
    assert [float(v) for v in spacing] == pytest.approx([0.48828125, 0.48828125])
    assert all(len(str(v)) <= 16 for v in spacing)


def test_uids_are_never_touched() -> None:
    elem = DataElement(0x0020000D, "UI", "05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758")
    assert clean_element(elem) is elem
