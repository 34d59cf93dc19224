"""The outbox (dicom_synth.jobstate): a job's message is written with the state change it
acts on, sent after, relayed when its send failed, taken once by the task it names."""

from __future__ import annotations

import time

import pytest

from dicom_synth.domain import JobStatus
from dicom_synth.jobstate import (
    OUTBOX_LEASE_SECONDS,
    advance,
    begin_attempt,
    deliver,
    new_job,
    redispatch_untaken,
    relay,
)
from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, TASK_SYNTHESIZE

S = JobStatus
both_backends = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)


class Broker:
    """A send_task that records messages, or refuses them while `down`."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str]] = []  # (job_id, task, token)
        self.down = False

    def __call__(self, name, args, kwargs=None):
        if self.down:
            raise ConnectionError("broker down")
        self.messages.append((args[0], name, (kwargs or {})["token"]))


@pytest.fixture
def store(job_store_url) -> JobStore:
    return JobStore(job_store_url)


def _create(store: JobStore, job_id: str, send: str | None = TASK_CLASSIFY):
    return store.create(new_job(send=send, job_id=job_id, source_series_uid=f"1.2.{job_id}",
                                study_instance_uid="1.2", origin="http"))


@both_backends
def test_a_message_the_broker_refused_is_relayed_once_after_its_lease(store):
    broker = Broker()
    broker.down = True
    job = _create(store, "j")
    assert not deliver(store, broker, job)  # the broker is down: no error, the message stays
    assert store.get("j").status is S.RECEIVED and store.get("j").outbox["due"] is not None
    now = time.time()
    assert relay(store, broker, now=now) == []  # its writer's lease is still running
    broker.down = False
    assert relay(store, broker, now=now + OUTBOX_LEASE_SECONDS + 1) == [("j", TASK_CLASSIFY)]
    assert broker.messages == [("j", TASK_CLASSIFY, job.outbox["token"])]
    assert store.get("j").outbox["due"] is None  # noted sent
    assert relay(store, broker, now=now + 10 * OUTBOX_LEASE_SECONDS) == []  # sent once
    assert store.outbox_due(now + 10 * OUTBOX_LEASE_SECONDS) == []


@both_backends
def test_a_sent_message_is_not_relayed_and_a_final_state_empties_the_outbox(store):
    broker = Broker()
    assert deliver(store, broker, _create(store, "j"))
    assert relay(store, broker, now=time.time() + 3600) == []
    assert len(broker.messages) == 1
    advance(store, "j", S.FAILED, error="x")
    assert store.get("j").outbox is None


@both_backends
def test_a_task_takes_only_the_message_the_job_names_and_only_one_copy(store):
    broker = Broker()
    deliver(store, broker, _create(store, "j"))
    ((_, _, token),) = broker.messages
    only = {S.RECEIVED, S.CLASSIFIED}
    assert begin_attempt(store, "j", TASK_CLASSIFY, only_from=only, token="not-it", message_id="m0") is None
    assert begin_attempt(store, "j", TASK_CLASSIFY, only_from=only, token=token, message_id="m1") is not None
    # a second copy of the message (another message id, e.g. relayed twice) does not start it again
    assert begin_attempt(store, "j", TASK_CLASSIFY, only_from=only, token=token, message_id="m2") is None
    # the same message again (a retry or redelivery keeps its Celery task id) does
    assert begin_attempt(store, "j", TASK_CLASSIFY, only_from=only, token=token, message_id="m1") is not None
    assert store.get("j").attempts == {TASK_CLASSIFY: 2}


@both_backends
def test_after_a_broker_restart_untaken_messages_are_sent_again_and_the_old_copies_are_no_ops(store):
    broker = Broker()
    deliver(store, broker, _create(store, "waiting"))
    deliver(store, broker, _create(store, "running"))
    (_, _, old_waiting), (_, _, running_token) = broker.messages
    begin_attempt(store, "running", TASK_CLASSIFY, only_from={S.RECEIVED}, token=running_token, message_id="r")
    broker.messages.clear()
    assert redispatch_untaken(store, broker) == [("waiting", TASK_CLASSIFY)]
    ((_, _, new_waiting),) = broker.messages
    assert new_waiting != old_waiting
    only = {S.RECEIVED}
    assert begin_attempt(store, "waiting", TASK_CLASSIFY, only_from=only, token=old_waiting, message_id="a") is None
    assert begin_attempt(store, "waiting", TASK_CLASSIFY, only_from=only, token=new_waiting, message_id="b")


@both_backends
def test_each_step_writes_the_next_message_with_its_state(store):
    _create(store, "j", send=None)
    advance(store, "j", S.CLASSIFIED)
    queued = advance(store, "j", S.QUEUED, send=TASK_SYNTHESIZE)
    assert queued.outbox["task"] == TASK_SYNTHESIZE and store.get("j").outbox == queued.outbox
    running = begin_attempt(store, "j", TASK_SYNTHESIZE, only_from={S.QUEUED}, to=S.RUNNING,
                            token=queued.outbox["token"], message_id="s")
    assert running.outbox["taken"] == "s"
    exporting = advance(store, "j", S.EXPORTING, send=TASK_EXPORT)
    assert exporting.outbox["task"] == TASK_EXPORT and exporting.outbox["token"] != queued.outbox["token"]
