"""`python -m models.domain_reference`: the `features` graph surgery is exact and
reproducible, and the command writes a card whose domain the runtime reads."""

from __future__ import annotations

import json
import shutil

import pytest

from dicom_synth.registry import load_card, sha256_file
from models.domain_reference import FEATURES_OUTPUT, has_features, main

onnx = pytest.importorskip("onnx")


def _without_features(src, dst) -> None:
    """The committed graph less its `features` output and the nodes that only feed it."""
    model = onnx.load(str(src))
    keep = [o for o in model.graph.output if o.name != FEATURES_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    nodes = [n for n in model.graph.node if not n.name.startswith("/domain/")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


def test_surgery_reproduces_the_committed_graph_and_the_card_is_rewritten(tmp_path, capsys):
    committed = load_card("brain_contrasts")
    assert has_features(committed.onnx_path)
    shutil.copy(committed.card_path, tmp_path / committed.card_path.name)
    _without_features(committed.onnx_path, tmp_path / committed.onnx_file)
    card = json.loads((tmp_path / committed.card_path.name).read_text())
    card["sha256"] = sha256_file(tmp_path / committed.onnx_file)
    del card["domain"]
    (tmp_path / committed.card_path.name).write_text(json.dumps(card))

    assert main(["--task", "brain_contrasts", "--models-dir", str(tmp_path), "--counts", "2", "2", "1"]) == 0
    out = capsys.readouterr().out
    assert "main output bit-identical" in out
    rebuilt = load_card("brain_contrasts", tmp_path)  # sha256 checked against the new file
    assert rebuilt.sha256 == committed.sha256  # the same surgery gives the same bytes
    domain = rebuilt.extra["domain"]
    assert domain["calibration"]["series"] == 8 and domain["held_out"]["series"] == 4
    assert domain["features"]["dim"] == 48 and domain["features"]["threshold"] > 0
    assert domain["orientation"] == ["axial"] and domain["modality"] == ["MR"]
