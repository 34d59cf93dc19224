"""QIDO-RS matching (service.dicomweb.qido) on real headers: wildcards, UID lists, date
ranges, lower-level keys at a higher level, includefield, limit and offset."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from service.dicomweb.index import IndexedInstance
from service.dicomweb.qido import QueryError, parse_query, search, value_matches


def _inst(study: str, series: str, sop: str, **kw) -> IndexedInstance:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    for k, v in kw.items():
        setattr(ds, k, v)
    return IndexedInstance(Path(f"/nowhere/{sop}.dcm"), ds)


HELD = [
    _inst("1.1", "1.1.1", "1.1.1.1", PatientID="P1", PatientName="Doe^Jane", StudyDate="20240105",
          Modality="MR", SeriesDescription="T1 AX", InstanceNumber=1),
    _inst("1.1", "1.1.1", "1.1.1.2", PatientID="P1", PatientName="Doe^Jane", StudyDate="20240105",
          Modality="MR", SeriesDescription="T1 AX", InstanceNumber=2),
    _inst("1.1", "1.1.2", "1.1.2.1", PatientID="P1", PatientName="Doe^Jane", StudyDate="20240105",
          Modality="MR", SeriesDescription="SYNTHETIC DCE phase 1", InstanceNumber=1),
    _inst("1.2", "1.2.1", "1.2.1.1", PatientID="P2", PatientName="Roe^Rick", StudyDate="20240320",
          Modality="CT", SeriesDescription="CHEST", InstanceNumber=1),
]


def _search(level: str, **params: str) -> list[dict]:
    return search(parse_query(level, params.items()), HELD)


def _uids(results: list[dict], tag: str) -> list[str]:
    return [r[tag]["Value"][0] for r in results]


STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


def test_study_level_keys_and_computed_counts() -> None:
    (study,) = _search("study", PatientID="P1")
    assert study[STUDY]["Value"] == ["1.1"]
    assert study["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["MR"]  # ModalitiesInStudy
    assert "00080060" not in study  # a study has no one Modality


def test_a_series_key_at_study_level_matches_studies_with_such_a_series() -> None:
    assert _uids(_search("study", Modality="CT"), STUDY) == ["1.2"]
    assert _uids(_search("study", ModalitiesInStudy="MR"), STUDY) == ["1.1"]
    assert _uids(_search("study", SeriesDescription="SYNTH*"), STUDY) == ["1.1"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("SYNTHETIC*", ["1.1.2"]), ("*AX", ["1.1.1"]), ("T? AX", ["1.1.1"]), ("CHEST", ["1.2.1"]),
    ("CHES", []), ("*", ["1.1.1", "1.1.2", "1.2.1"]),
])
def test_series_description_wildcards(pattern: str, expected: list[str]) -> None:
    assert _uids(_search("series", SeriesDescription=pattern), SERIES) == expected


@pytest.mark.parametrize(("spec", "expected"), [
    ("20240105", ["1.1"]), ("20240101-20240131", ["1.1"]), ("-20240201", ["1.1"]), ("20240201-", ["1.2"]),
    ("20240101-20241231", ["1.1", "1.2"]), ("20250101-", []),
])
def test_study_date_ranges(spec: str, expected: list[str]) -> None:
    assert _uids(_search("study", StudyDate=spec), STUDY) == expected


def test_uid_lists_tags_and_person_names() -> None:
    assert _uids(_search("study", StudyInstanceUID="1.2,1.1"), STUDY) == ["1.1", "1.2"]
    assert _uids(_search("study", **{"0020000D": "1.2"}), STUDY) == ["1.2"]
    assert _uids(_search("study", PatientName="doe*"), STUDY) == ["1.1"]
    assert _uids(_search("instance", SOPInstanceUID="1.1.1.2"), SOP) == ["1.1.1.2"]


def test_limit_offset_and_includefield() -> None:
    every = _uids(_search("instance"), SOP)
    assert every == ["1.1.1.1", "1.1.1.2", "1.1.2.1", "1.2.1.1"]
    assert _uids(_search("instance", limit="2"), SOP) == every[:2]
    assert _uids(_search("instance", limit="2", offset="2"), SOP) == every[2:]
    assert _search("instance", offset="9") == []
    (first, *_) = _search("series")
    assert first["00100020"]["Value"] == ["P1"]  # the study's attributes come with its series
    assert "00200013" not in first  # InstanceNumber is no series attribute
    (first, *_) = _search("series", includefield="InstanceNumber")
    assert first["00200013"]["Value"] == [1]
    (first, *_) = _search("series", includefield="all")
    assert first["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_a_malformed_query_is_refused() -> None:
    with pytest.raises(QueryError):
        parse_query("study", [("NoSuchKeyword", "x")])
    with pytest.raises(QueryError):
        parse_query("study", [("limit", "-1")])


def test_universal_matching_keeps_everything() -> None:
    assert value_matches("PatientID", "", HELD[0].header)
