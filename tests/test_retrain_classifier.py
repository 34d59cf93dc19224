"""`python -m models retrain series_classifier EXPORT --out MODELS [--labels labels.csv]`: from
a hospital-like PACS export (the classifier's phantom series of four classes with vendor-like
headers, written as DICOM files under PATIENT/DATE/SERIES folders with PACS file names, a
series nobody labelled mixed in) and a labels CSV, or from folders named after the classes,
to a network the service classifies with through SYNTH_MODELS_DIR, with a card that lists
the data and the metrics; an unknown class name, too few patients, or no labelled series
says what is missing and writes no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

pytest.importorskip("torch")

from dicom_synth.classify.pixelmodel import PixelModel  # noqa: E402
from dicom_synth.series import load_series  # noqa: E402
from models.__main__ import main  # noqa: E402
from models.classifier.phantom import make_series  # noqa: E402
from models.common import phantom_dicom as common  # noqa: E402
from models.dce.phantom_dicom import write_phantom_study  # noqa: E402
from tests.stack import start_stack  # noqa: E402
from tests.test_retrain import _hospital_names  # noqa: E402

CLASSES = ("breast_t2", "brain_flair", "ct_abdomen_pelvis", "unknown")


def write_labelled(folder: Path, label: str, seed: int, pid: str) -> tuple[str, list[Path]]:
    """One phantom series of the class as DICOM files of patient `pid` (the phantom's vendor-like
    headers, this patient's study, 12-bit stored pixels, CT as HU + 1024); (series UID, files)."""
    s = make_series(label, seed, n_slices=3, split="test")
    is_ct = str(s.headers[0].Modality) == "CT"
    study, series = common.uid("hospital-cls", pid), common.uid("hospital-cls", pid, label)
    day, start = common.study_day(seed, 9, 200)
    headers = []
    for k, src in enumerate(s.headers):
        sop = common.uid("hospital-cls", pid, label, k)
        ds = common.new_instance(src.SOPClassUID, sop, src.get("ImageType", ["ORIGINAL", "PRIMARY"]), day,
                                 start.strftime("%H%M%S"), start.strftime("%H%M%S"))
        ds.update({e.tag: e for e in src if e.keyword not in ("SOPInstanceUID", "PixelData")})
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = sop, series, study
        ds.SeriesNumber, ds.InstanceNumber = 3 + CLASSES.index(label), k + 1
        common.set_patient(ds, f"HOSP^{pid}", pid, "19700101", "F", "054Y")
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if is_ct:
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        headers.append(ds)
    stored = common.to_stored(s.volume, offset=1024.0 if is_ct else 0.0)
    return series, common.write_series(folder, headers, stored, label)


def write_export(root: Path, patients: int, layout: str = "pacs") -> dict[str, dict[str, str]]:
    """`pacs`: PATIENT/DATE/S000n/IM00000 and an unlabelled breast T1 in the first study;
    `folders`: CLASS/PATIENT/... . {patient: {label: series UID}}."""
    uids: dict[str, dict[str, str]] = {}
    for i in range(patients):
        pid = f"CLS{i:03d}"
        uids[pid] = {}
        for label in CLASSES:
            series, files = write_labelled(root / "tmp", label, 300_500 + 10 * i + CLASSES.index(label), pid)
            where = (root / f"Patient_{pid}" / "2024-04-02" / f"S{3 + CLASSES.index(label):04d}" if layout == "pacs"
                     else root / label / pid / "series")
            _hospital_names(files, where)
            uids[pid][label] = series
    if layout == "pacs":
        breast = write_phantom_study(root / "Patient_CLS000" / "tmp", 3100, n_slices=2, size=32, patient_id="CLS000")
        _hospital_names(breast["t1"], root / "Patient_CLS000" / "2024-04-02" / "S0099")
        for f in breast["dce1"]:
            f.unlink()
        breast["dce1"][0].parent.rmdir()
        (root / "Patient_CLS000" / "tmp").rmdir()
    return uids


def write_csv(path: Path, uids: dict[str, dict[str, str]]) -> Path:
    """The FLAIR of every patient by folder (a path row), the rest by series UID."""
    rows = ["series_instance_uid,label"]
    for pid, by_label in uids.items():
        rows += [f"{u},{label}" for label, u in by_label.items() if label != "brain_flair"]
        rows.append(f"Patient_{pid}/2024-04-02/S{3 + CLASSES.index('brain_flair'):04d},brain_flair")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_retrain_classifier_from_a_hospital_export_is_used_by_the_service(tmp_path: Path, capsys,
                                                                          redis_server) -> None:
    export = tmp_path / "export"
    uids = write_export(export, patients=6)
    labels = write_csv(tmp_path / "labels.csv", uids)
    out = tmp_path / "my-models"
    assert main(["retrain", "series_classifier", str(export), "--out", str(out), "--config", "tiny",
                 "--labels", str(labels)]) == 0
    assert f"SYNTH_MODELS_DIR={out.resolve()}" in capsys.readouterr().out
    card = json.loads((out / "series_classifier.card.json").read_text())
    assert card["task"] == "series_classification" and card["name"] == "series_classifier"
    data = card["training_data"]
    assert data["patients"] == {"train": 2, "val": 2, "test": 2} and data["unlabelled_series"] == 1
    assert data["labelled_series"] == {"train": 8, "val": 8, "test": 8}
    assert all(data["per_class"][s] == dict.fromkeys(sorted(CLASSES), 2) for s in ("train", "val", "test"))
    assert data["real_series_per_class"] == dict.fromkeys(CLASSES, 4)  # train and validation patients
    metrics = card["metrics"]
    for method in ("headers_only", "pixels_only", "fused"):
        assert 0 <= metrics[method]["accuracy"] <= 1 and set(metrics[method]["per_class"]) == set(CLASSES)
    assert len(metrics["series"]) == 8 and isinstance(metrics["shortfalls"], list)
    assert card["build"]["command"].startswith("python -m models retrain series_classifier")
    assert card["domain"]["features"]["threshold"] > 0
    assert (out / "series_classifier.retrain" / "metrics.json").is_file()

    # the service classifies with it: a held-out patient's breast T2 (no route: the job ends skipped)
    test_pid = next(p for p, by in uids.items() if any(s["series"] == by["breast_t2"] and s["split"] == "test"
                                                       for s in data["series"]))
    files = sorted((export / f"Patient_{test_pid}" / "2024-04-02" / "S0003").iterdir())
    assert dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID == uids[test_pid]["breast_t2"]
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, env={"SYNTH_MODELS_DIR": str(out)})
    try:
        r = stack.post(files)
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["job_id"])
    finally:
        stack.stop()
    evidence = job["evidence"]
    assert evidence["pixel_model_sha256"] == card["sha256"], evidence
    assert evidence["pixel_domain"]["model"] == "series_classifier"
    # the probabilities recorded are this network's (the demo's differ)
    probs = PixelModel(out / "series_classifier.onnx").predict(load_series(files).volume, is_ct=False)
    recorded = evidence["pixel_probabilities"]
    assert recorded and all(abs(v - probs[k]) < 1e-3 for k, v in recorded.items()), (recorded, probs)
    # no route for either class a breast T2 may be given by the fusion of headers and a tiny network
    assert job["series_class"] in ("breast_t2", "unknown") and job["status"] == "skipped", job


def test_labelled_folders_train_too(tmp_path: Path, capsys) -> None:
    export = tmp_path / "export"
    write_export(export, patients=3, layout="folders")
    out = tmp_path / "my-models"
    assert main(["retrain", "series_classifier", str(export), "--out", str(out), "--config", "tiny"]) == 0
    card = json.loads((out / "series_classifier.card.json").read_text())
    assert card["training_data"]["labelled_series"] == {"train": 4, "val": 4, "test": 4}
    assert card["training_data"]["labels"] == "folders named after the classes"
    assert np.isfinite(card["metrics"]["fused"]["accuracy"])


@pytest.mark.parametrize(("setup", "says"), [
    ("unknown_folder", ["'knee_pd' is not a class of the series classifier", "known: breast_t1_nc"]),
    ("unknown_csv", ["'t2_abdomen' is not a class"]),
    ("two_patients", ["too few patients", "at least 3 are needed"]),
    ("nothing_labelled", ["no labelled image series", "--labels"]),
])
def test_not_enough_data_says_what_is_missing_and_writes_no_model(tmp_path: Path, capsys, setup, says) -> None:
    export = tmp_path / "export"
    argv = ["retrain", "series_classifier", str(export), "--out", str(tmp_path / "my-models"), "--config", "tiny"]
    if setup == "unknown_folder":
        write_export(export, patients=3, layout="folders")
        (export / "knee_pd").mkdir()
    elif setup == "unknown_csv":
        uids = write_export(export, patients=3)
        labels = tmp_path / "labels.csv"
        labels.write_text(write_csv(labels, uids).read_text() + f"{uids['CLS000']['unknown']},t2_abdomen\n")
        argv += ["--labels", str(labels)]
    elif setup == "two_patients":
        write_export(export, patients=2, layout="folders")
    else:
        write_export(export, patients=3)  # PACS folders, and no --labels
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in says), err
    out = tmp_path / "my-models"
    assert not out.exists() or not list(out.iterdir())
