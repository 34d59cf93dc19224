"""Routing table: defaults, user files, and errors that name the valid choices."""

from pathlib import Path

import pytest

from dicom_synth.classify import LABELS, load_routing
from dicom_synth.classify.routing import RoutingError, RoutingTable


def test_default_routes():
    table = load_routing()
    assert table.route("breast_t1_nc") == "dce_phase1"
    assert table.route("breast_dce_pre") == "dce_phase1"
    assert table.route("ct_head_neck") == "pseudo_mri"
    assert table.route("ct_abdomen_pelvis") == "pseudo_mri"
    for label in ("brain_t1", "brain_t2", "brain_t1c", "brain_flair"):
        assert table.route(label) == "brain_contrasts"
    routed = {"breast_t1_nc", "breast_dce_pre", "ct_head_neck", "ct_abdomen_pelvis",
              "brain_t1", "brain_t2", "brain_t1c", "brain_flair"}
    for label in set(LABELS) - routed:
        assert table.route(label) is None, label
    assert table.route("no_such_class") is None


def test_user_file_is_read_and_reread_after_edit(tmp_path: Path):
    path = tmp_path / "routing.yaml"
    path.write_text("routes:\n  breast_t2: dce_phase1\n")
    assert load_routing(path).route("breast_t2") == "dce_phase1"
    assert load_routing(path).route("breast_t1_nc") is None
    path.write_text("routes:\n  breast_t2: null\n  ct_chest: pseudo_mri\n")
    import os
    os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    table = load_routing(path)
    assert table.route("breast_t2") is None
    assert table.route("ct_chest") == "pseudo_mri"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"breast_t3": "dce_phase1"}, "unknown series class 'breast_t3'"),
        ({"breast_t2": "make_coffee"}, "unknown task 'make_coffee'"),
        ({"unknown": "dce_phase1"}, "cannot be routed"),
    ],
)
def test_bad_routes_are_refused(routes, message):
    with pytest.raises(RoutingError, match=message):
        RoutingTable.from_mapping(routes)
