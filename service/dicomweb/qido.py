"""QIDO-RS (PS3.18 10.6): search studies, series and instances of the index.

Matching (PS3.4 C.2.2.2): a UID key matches any of a list ("a,b" or "a\\b"); string keys
match exactly or with the wildcards `*` and `?` (person names case-insensitively); dates
and times match a single value or a range (`a-b`, `-b`, `a-`). A key of a lower level
matches a higher-level entity when any of its instances matches (a study matches
`Modality=MR` when one of its series is MR). Results carry the level's default
attributes (PS3.18 Table 10.6.3-3..5), those named by `includefield` (`all` for every
attribute of the representative instance), and are paged by `offset` and `limit`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from service.dicomweb.index import IndexedInstance

STUDY_ATTRIBUTES = ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
                    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "StudyDescription")
SERIES_ATTRIBUTES = ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "SeriesDate",
                     "SeriesTime", "PerformedProcedureStepStartDate", "BodyPartExamined")
INSTANCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                       "NumberOfFrames", "ImageType")
LEVELS = ("study", "series", "instance")
_DEFAULTS = {"study": STUDY_ATTRIBUTES, "series": SERIES_ATTRIBUTES, "instance": INSTANCE_ATTRIBUTES}
_KEY_OF = {"study": lambda i: (i.study_uid,), "series": lambda i: (i.study_uid, i.series_uid),
           "instance": lambda i: (i.study_uid, i.series_uid, i.sop_uid)}
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "orderby"}
_STUDY_COMPUTED = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_COMPUTED = ("NumberOfSeriesRelatedInstances",)


class QueryError(ValueError):
    """A search the client formed wrongly (answered 400 with the reason)."""


@dataclass(frozen=True)
class Query:
    level: str
    filters: tuple[tuple[str, str], ...]  # (keyword, value)
    include: frozenset[str] | None  # None: "all"
    limit: int | None
    offset: int


def _keyword(key: str) -> str:
    """A keyword from a keyword or an 8-hex-digit tag; QueryError for an unknown one."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        kw = keyword_for_tag(Tag(int(key, 16)))
        if kw:
            return kw
    elif tag_for_keyword(key) is not None:
        return key
    raise QueryError(f"unknown attribute {key!r}")


def parse_query(level: str, params: Iterable[tuple[str, str]]) -> Query:
    filters: list[tuple[str, str]] = []
    include: set[str] | None = set()
    limit: int | None = None
    offset = 0
    for key, value in params:
        if key == "includefield":
            for name in filter(None, (v.strip() for v in value.split(","))):
                if name == "all":
                    include = None
                elif include is not None:
                    include.add(_keyword(name))
        elif key in ("limit", "offset"):
            if not value.isdigit():
                raise QueryError(f"{key} must be a non-negative integer, not {value!r}")
            if key == "limit":
                limit = int(value)
            else:
                offset = int(value)
        elif key in _CONTROL:
            continue
        else:
            filters.append((_keyword(key), value))
    return Query(level, tuple(filters), None if include is None else frozenset(include), limit, offset)


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    value = ds[keyword].value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def _wildcard(pattern: str, case_insensitive: bool) -> re.Pattern:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(rf"^{rx}$", re.IGNORECASE | re.DOTALL if case_insensitive else re.DOTALL)


def _in_range(value: str, spec: str) -> bool:
    low, _, high = spec.partition("-")
    v = value.strip()
    return (not low or v >= low.strip()) and (not high or v[:len(high.strip())] <= high.strip())


def value_matches(keyword: str, wanted: str, ds: Dataset) -> bool:
    """Whether the data set matches one key (PS3.4 C.2.2.2)."""
    vr = dictionary_VR(keyword)
    have = _values(ds, keyword)
    if wanted == "":
        return True  # universal matching: return the attribute, do not filter
    if vr == "UI":
        return bool(set(have) & {u.strip() for u in re.split(r"[,\\]", wanted) if u.strip()})
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        return any(_in_range(v, wanted) for v in have)
    if vr == "PN":
        have = [v.replace("^", " ").strip() for v in have] + have
    if "*" in wanted or "?" in wanted:
        rx = _wildcard(wanted, vr == "PN")
        return any(rx.match(v) for v in have)
    if vr == "PN":
        return any(v.lower() == wanted.lower() for v in have)
    options = [w for w in wanted.split("\\")] if vr in ("CS",) else [wanted]
    return any(v.strip() == o.strip() for v in have for o in options)


def _entity_matches(keyword: str, wanted: str, members: Sequence[IndexedInstance]) -> bool:
    if keyword == "ModalitiesInStudy":
        keyword = "Modality"
    return any(value_matches(keyword, wanted, m.header) for m in members)


def search(query: Query, held: Sequence[IndexedInstance]) -> list[dict]:
    """The DICOM JSON results of a search over `held` instances."""
    groups: dict[tuple, list[IndexedInstance]] = {}
    for inst in held:
        groups.setdefault(_KEY_OF[query.level](inst), []).append(inst)
    by_study: dict[str, list[IndexedInstance]] = {}
    for inst in held:
        by_study.setdefault(inst.study_uid, []).append(inst)
    matched = [members for members in groups.values()
               if all(_entity_matches(k, v, members) for k, v in query.filters)]
    page = matched[query.offset:]
    if query.limit is not None:
        page = page[:query.limit]
    return [_result(query, members, by_study[members[0].study_uid]).to_json_dict() for members in page]


def _result(query: Query, members: list[IndexedInstance], study_members: list[IndexedInstance]) -> Dataset:
    first = members[0].header
    out = Dataset()
    wanted: list[str] = []
    for level in LEVELS[:LEVELS.index(query.level) + 1]:
        wanted.extend(_DEFAULTS[level])
    wanted.extend(k for k, _ in query.filters)
    if query.include is None:
        wanted.extend(el.keyword for el in first if el.keyword and el.tag.group != 0x7FE0)
    else:
        wanted.extend(query.include)
    lower = {"study": SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES, "series": INSTANCE_ATTRIBUTES}.get(query.level, ())
    asked = query.include or frozenset()
    wanted = [k for k in wanted if k not in lower or k in asked]  # a study has no one Modality
    for kw in dict.fromkeys(wanted):
        if kw in _STUDY_COMPUTED + _SERIES_COMPUTED:
            continue
        if kw in first:
            out[kw] = first[kw]
    if query.level == "study":
        modalities = sorted({m for i in study_members for m in _values(i.header, "Modality")})
        out.ModalitiesInStudy = modalities
        out.NumberOfStudyRelatedSeries = len({i.series_uid for i in study_members})
        out.NumberOfStudyRelatedInstances = len(study_members)
    if query.level == "series":
        out.NumberOfSeriesRelatedInstances = len(members)
    return out
