"""Who may send (issue 17): SYNTH_ALLOWED_CALLING_AETS entries `AE` or `AE@host-or-cidr`,
checked at association over real loopback sockets. 127.0.0.2 is a second loopback
address: a peer bound to it is a different source address on the same host."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError
from pynetdicom import AE

from dicom_synth.callers import AllowedCaller, CallerPolicy
from dicom_synth.settings import Settings
from tests.test_listener import HOST, VERIFICATION, make_series, start_listener, storescu  # noqa: F401


def _associate(port: int, ae_title: str, source: str = HOST):
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    return ae.associate(HOST, port, ae_title="SYNTH", bind_address=(source, 0))


def test_entries_parse_and_bad_ones_stop_the_start(monkeypatch) -> None:
    assert AllowedCaller.parse(" PACS ") == AllowedCaller("PACS")
    net = AllowedCaller.parse("PACS@10.1.0.0/16")
    assert net.admits("10.1.2.3") and not net.admits("10.2.0.1") and not net.admits("::1")
    assert AllowedCaller.parse("CT1@192.168.4.7").admits("::ffff:192.168.4.7")  # dual-stack socket
    assert AllowedCaller.parse("WS@localhost").admits("127.0.0.1")
    assert not AllowedCaller.parse("WS@no-such-host.invalid").admits("127.0.0.1")
    for bad in ("PACS@", "@10.0.0.1", "PACS@10.0.0.0/33", "A_TITLE_LONGER_THAN_16@10.0.0.1"):
        with pytest.raises(ValueError):
            AllowedCaller.parse(bad)
    monkeypatch.setenv("SYNTH_ALLOWED_CALLING_AETS", "ORTHANC@10.0.0.0/8, MODALITY1")
    assert Settings().allowed_calling_aets == ["ORTHANC@10.0.0.0/8", "MODALITY1"]
    monkeypatch.setenv("SYNTH_ALLOWED_CALLING_AETS", "ORTHANC@10.0.0.0/40")
    with pytest.raises(ValidationError, match="neither an address"):
        Settings()


def test_policy_reasons() -> None:
    policy = CallerPolicy(["PACS@127.0.0.2", "PACS@10.0.0.0/8", "OLD"])
    assert policy.refusal("PACS", "127.0.0.2") is None and policy.refusal("PACS", "10.9.9.9") is None
    assert policy.refusal("OLD", "203.0.113.5") is None  # a bare title: any address
    assert policy.refusal("PACS", "127.0.0.1") == (
        "calling AE title 'PACS' not allowed from 127.0.0.1 (allowed from 127.0.0.2, 10.0.0.0/8)")
    assert policy.refusal("INTRUDER", "127.0.0.2") == "calling AE title 'INTRUDER' not allowed"


def test_allowed_title_from_a_wrong_address_is_refused(start_listener, tmp_path: Path, caplog) -> None:  # noqa: F811
    run = start_listener(allowed_calling_aets=["PACS@127.0.0.2", "CTNET@127.0.1.0/24", "OLD"])
    with caplog.at_level(logging.WARNING, logger="service.dicom_scp"):
        for title in ("PACS", "CTNET"):
            assoc = _associate(run.port, title, source="127.0.0.1")
            assert assoc.is_rejected, title
            rj = assoc.acceptor.primitive
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    reasons = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any("'PACS' not allowed from 127.0.0.1 (allowed from 127.0.0.2)" in m for m in reasons), reasons
    assert any("'CTNET' not allowed from 127.0.0.1 (allowed from 127.0.1.0/24)" in m for m in reasons), reasons

    for title, source in (("PACS", "127.0.0.2"), ("OLD", "127.0.0.1")):
        assoc = _associate(run.port, title, source=source)
        assert assoc.is_established, (title, source)
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    # storescu (DCMTK) as OLD from 127.0.0.1 stores; as PACS from 127.0.0.1 it is refused.
    files = make_series(tmp_path / "s", 2)
    refused = storescu(run.port, files, aet="PACS")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert storescu(run.port, files, aet="OLD").returncode == 0
    assert len(run.wait_for(1)[0][1].files) == 2


def test_cidr_including_the_peer_admits_it(start_listener) -> None:  # noqa: F811
    run = start_listener(allowed_calling_aets=["PACS@127.0.0.0/30"])
    assoc = _associate(run.port, "PACS")
    assert assoc.is_established
    assoc.release()
    assert _associate(run.port, "PACS", source="127.0.0.5").is_rejected
