"""The job state machine: its table, `advance`, `resume` after a crash in every state,
the export task's failure handling, and that nothing else writes a job's status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dicom_synth.domain import JobStatus
from dicom_synth.jobstate import NOT_FINAL, TRANSITIONS, IllegalTransition, advance, fail, new_job, resume
from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, TASK_SYNTHESIZE

REPO = Path(__file__).resolve().parents[1]
S = JobStatus
both_backends = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)
# How a job gets to each state by the legal path, from received.
PATH_TO = {
    S.RECEIVED: [],
    S.CLASSIFIED: [S.CLASSIFIED],
    S.QUEUED: [S.CLASSIFIED, S.QUEUED],
    S.RUNNING: [S.CLASSIFIED, S.QUEUED, S.RUNNING],
    S.EXPORTING: [S.CLASSIFIED, S.QUEUED, S.RUNNING, S.EXPORTING],
    S.DONE: [S.CLASSIFIED, S.QUEUED, S.RUNNING, S.DONE],
    S.FAILED: [S.FAILED],
    S.SKIPPED: [S.CLASSIFIED, S.SKIPPED],
}


def _made(store: JobStore, job_id: str, state: JobStatus, **fields) -> None:
    store.create(new_job(job_id=job_id, source_series_uid=f"1.2.{job_id}", study_instance_uid="1.2",
                         origin="http", **fields))
    for to in PATH_TO[state]:
        advance(store, job_id, to)
    assert store.get(job_id).status is state


@pytest.fixture
def store(job_store_url) -> JobStore:
    return JobStore(job_store_url)


def test_the_table_is_the_contract():
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[S.SKIPPED] == set()  # final for good
    assert TRANSITIONS[S.DONE] == TRANSITIONS[S.FAILED] == {S.EXPORTING}  # resend
    assert all(S.FAILED in TRANSITIONS[s] for s in NOT_FINAL)
    assert S.SKIPPED in TRANSITIONS[S.CLASSIFIED] and S.SKIPPED in TRANSITIONS[S.RUNNING]  # no route; domain guard


@both_backends
def test_the_legal_path_and_resend(store):
    _made(store, "j", S.RECEIVED)
    for to in (S.CLASSIFIED, S.QUEUED, S.RUNNING, S.EXPORTING):
        advance(store, "j", to)
    advance(store, "j", S.FAILED, error="PACS down")
    advance(store, "j", S.EXPORTING, error=None)  # resend
    job = advance(store, "j", S.DONE, progress=1.0)
    assert job.status is S.DONE and job.error is None and job.progress == 1.0
    assert list(job.timeline) == ["received", "classified", "queued", "running", "exporting", "failed", "done"]
    assert advance(store, "j", S.EXPORTING).status is S.EXPORTING  # resend of a done job


@both_backends
@pytest.mark.parametrize(("state", "to"), [
    (S.DONE, S.RUNNING), (S.SKIPPED, S.QUEUED), (S.SKIPPED, S.FAILED), (S.RECEIVED, S.DONE),
    (S.QUEUED, S.DONE), (S.EXPORTING, S.RUNNING), (S.FAILED, S.QUEUED), (S.RECEIVED, S.RECEIVED),
])
def test_illegal_transitions_are_refused_and_write_nothing(store, state, to):
    _made(store, "j", state)
    before = store.get("j")
    with pytest.raises(IllegalTransition, match=f"{state} → {to} is not allowed"):
        advance(store, "j", to, error="should not be written")
    with pytest.raises(IllegalTransition):
        store.update("j", status=to)
    after = store.get("j")
    assert after.status is state and after.error == before.error and after.updated_at == before.updated_at


@both_backends
def test_a_duplicate_task_finds_the_job_moved_on_and_writes_nothing(store):
    """A late-acked task running twice: the slower copy expects `received`, the job is
    `queued`; its move is a no-op, not an error and not a regression."""
    _made(store, "j", S.QUEUED)
    before = store.get("j")
    assert advance(store, "j", S.CLASSIFIED, only_from={S.RECEIVED, S.CLASSIFIED}, series_class="x") is None
    after = store.get("j")
    assert after.status is S.QUEUED and after.series_class is None and after.updated_at == before.updated_at
    # re-entry the tasks need: classify and synthesize may each run twice
    _made(store, "r", S.RUNNING)
    assert advance(store, "r", S.RUNNING, only_from={S.QUEUED, S.RUNNING}, progress=0.0).status is S.RUNNING


@both_backends
def test_fail_ends_an_unfinished_job_and_leaves_a_final_one(store):
    _made(store, "run", S.RUNNING)
    _made(store, "done", S.DONE)
    assert fail(store, "run", "boom").error == "boom"
    assert fail(store, "done", "late failure") is None
    assert store.get("done").status is S.DONE and store.get("done").error is None


class _Sent(list):
    """A send_task that records (job_id, task name), and each message's token in `tokens`."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str | None] = []

    def __call__(self, name, args, kwargs=None):
        self.append((args[0], name))
        self.tokens.append((kwargs or {}).get("token"))


@both_backends
@pytest.mark.parametrize(("state", "task", "after"), [
    (S.RECEIVED, TASK_CLASSIFY, S.RECEIVED),
    (S.CLASSIFIED, TASK_CLASSIFY, S.CLASSIFIED),
    (S.QUEUED, TASK_SYNTHESIZE, S.QUEUED),
    (S.RUNNING, TASK_SYNTHESIZE, S.QUEUED),
    (S.EXPORTING, TASK_EXPORT, S.EXPORTING),
])
def test_resume_after_a_crash_requeues_the_right_task_idempotently(store, state, task, after):
    """A crash left the job in `state` (and a final job beside it): resume sends the task
    that moves it on; resuming again (the next process to start) sends the same task and
    leaves the job where it was."""
    _made(store, "left", state, claimed_by="gpu@node1")
    _made(store, "finished", S.DONE, claimed_by="gpu@node1")
    for _ in range(2):
        sent = _Sent()
        assert resume(store, sent) == [("left", task)] == sent
        assert store.get("left").status is after
    assert store.get("finished").status is S.DONE


@both_backends
def test_a_worker_resumes_only_the_jobs_it_claimed(store):
    _made(store, "mine", S.RUNNING, claimed_by="gpu@node1")
    _made(store, "theirs", S.RUNNING, claimed_by="gpu@node2")
    sent = _Sent()
    assert resume(store, sent, claimed_by="gpu@node1") == [("mine", TASK_SYNTHESIZE)]
    assert store.get("mine").status is S.QUEUED and store.get("theirs").status is S.RUNNING


@both_backends
def test_a_nodes_runner_resumes_its_nodes_jobs_and_unclaimed_ones_never_another_nodes(store):
    """Two nodes share the store: node1's runner, starting, must not requeue what node2's
    workers are running now (a dead node2's jobs are the stuck sweep's, after their deadline)."""
    _made(store, "gpu1", S.RUNNING, claimed_by="gpu@node1")
    _made(store, "export1", S.EXPORTING, claimed_by="export@node1")
    _made(store, "new", S.RECEIVED)
    _made(store, "gpu2", S.RUNNING, claimed_by="gpu@node2")
    _made(store, "gpu10", S.RUNNING, claimed_by="gpu@node10")  # a node name is matched whole
    sent = _Sent()
    assert sorted(resume(store, sent, node="node1")) == sorted(
        [("gpu1", TASK_SYNTHESIZE), ("export1", TASK_EXPORT), ("new", TASK_CLASSIFY)])
    assert store.get("gpu2").status is S.RUNNING and store.get("gpu10").status is S.RUNNING


def test_a_raising_export_ends_the_job_failed_with_the_reason(tmp_path, monkeypatch):
    """Not only a PACS that stays down (ExportError, handled in the task): any exception
    the export task raises ends the job failed with the reason, as the worker's tasks do."""
    from dicom_synth.settings import get_settings

    monkeypatch.setenv("SYNTH_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("SYNTH_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        from service.queue import JobTask, export

        assert isinstance(export, JobTask)
        store = JobStore(get_settings().jobs_db_url)
        _made(store, "j", S.EXPORTING)
        _made(store, "done", S.DONE)
        export.on_failure(OSError("No space left on device"), "task-1", ["j"], {}, None)
        export.on_failure(OSError("late"), "task-2", ["done"], {}, None)
        job = store.get("j")
        assert job.status is S.FAILED and job.error == "OSError: No space left on device"
        assert store.get("done").status is S.DONE
    finally:
        get_settings.cache_clear()


# ---------------------------------------------------------------- no status written elsewhere

RUNTIME = ("dicom_synth", "service", "worker")
STATE_MODULES = {"dicom_synth/jobstate.py", "dicom_synth/jobstore.py"}


def status_writes(source: str) -> list[str]:
    """Places in `source` that write a job's status: a `status=` keyword with a JobStatus
    value, or to Job(...)/new_job(...), or to a store-style `.update(job_id, status=...)`
    (a positional job ID; a dict's `.update(status=...)` has none); an assignment to
    `<x>.status`; any call of the store's `.mutate`; SQL that updates the jobs table."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "mutate":
                found.append(f"{where}: .mutate()")
            for kw in node.keywords:
                if kw.arg != "status":
                    continue
                mentions = {n.id for n in ast.walk(kw.value) if isinstance(n, ast.Name)}
                if "JobStatus" in mentions or name in ("Job", "new_job") or (name == "update" and node.args):
                    found.append(f"{where}: {name}(status=...)")
            if name == "update" and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "jobs":
                found.append(f"{where}: update(jobs)")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{where}: .status =" for t in targets if isinstance(t, ast.Attribute) and t.attr == "status"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "update jobs" in node.value.lower():
            found.append(f"{where}: SQL UPDATE jobs")
    return found


def test_the_scanner_finds_status_writes():
    bad = [
        "store.update(job_id, status=JobStatus.DONE)",
        "store.update(job_id, status='done')",
        "JobStore(url).update(j, status=to)",
        "job.status = JobStatus.FAILED",
        "Job(job_id='x', status=JobStatus.RUNNING, a=1)",
        "store.mutate(job_id, change)",
        "conn.execute('UPDATE jobs SET status = ?', x)",
        "conn.execute(update(jobs).values(status='done'))",
    ]
    for snippet in bad:
        assert status_writes(snippet), snippet
    fine = ["record.update(status='skipped', reason=r)", "advance(store, job_id, JobStatus.DONE, progress=1.0)",
            "store.update(job_id, progress=0.5)", "if job.status == JobStatus.DONE: pass"]
    for snippet in fine:
        assert not status_writes(snippet), snippet


def test_no_job_status_is_written_outside_the_state_machine():
    offenders = []
    for package in RUNTIME:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in STATE_MODULES or "/migrations/" in rel:
                continue
            offenders += [f"{rel} {w}" for w in status_writes(path.read_text())]
    assert not offenders, "job status written outside dicom_synth/jobstate.py:\n" + "\n".join(offenders)


@both_backends
def test_starts_that_never_finish_fail_the_job_as_poison_and_resume_does_not_send_it(store):
    from dicom_synth.jobstate import begin_attempt, end_attempt

    _made(store, "poison", S.QUEUED)
    _made(store, "fine", S.QUEUED)
    only = {S.QUEUED, S.RUNNING}
    # "fine": every start returns (end_attempt), so it may start any number of times
    for _ in range(4):
        assert begin_attempt(store, "fine", TASK_SYNTHESIZE, only_from=only, to=S.RUNNING, limit=2) is not None
        end_attempt(store, "fine", TASK_SYNTHESIZE)
    assert store.get("fine").attempts == {} and store.get("fine").status is S.RUNNING
    # "poison": two starts that never returned (each killed its worker)
    for n in (1, 2):
        job = begin_attempt(store, "poison", TASK_SYNTHESIZE, only_from=only, to=S.RUNNING, limit=2)
        assert job is not None and job.attempts == {TASK_SYNTHESIZE: n}
    sent = _Sent()
    assert resume(store, sent, limit=2) == [("fine", TASK_SYNTHESIZE)] == sent
    job = store.get("poison")
    assert job.status is S.FAILED and "started 2 times" in job.error and TASK_SYNTHESIZE in job.error
    # a redelivered copy of the task finds it failed and does not start
    assert begin_attempt(store, "poison", TASK_SYNTHESIZE, only_from=only, to=S.RUNNING, limit=2) is None


def test_a_third_start_fails_the_job_itself(store):
    from dicom_synth.jobstate import begin_attempt

    _made(store, "j", S.RECEIVED)
    for _ in range(2):
        assert begin_attempt(store, "j", TASK_CLASSIFY, only_from={S.RECEIVED}, limit=2) is not None
    assert begin_attempt(store, "j", TASK_CLASSIFY, only_from={S.RECEIVED}, limit=2) is None
    assert store.get("j").status is S.FAILED and "killed its worker" in store.get("j").error


def test_a_superseded_export_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SYNTH_PACS", "NOBODY@127.0.0.1:9")
    monkeypatch.delenv("SYNTH_DATABASE_URL", raising=False)
    from dicom_synth.settings import get_settings

    get_settings.cache_clear()
    try:
        from service.queue import export

        store = JobStore(get_settings().jobs_db_url)
        _made(store, "old", S.EXPORTING)
        store.update("old", superseded_by="new")
        assert export.apply(args=["old"]).get() == "superseded"
        job = store.get("old")
        assert job.status is S.SKIPPED and job.error == "superseded by job new: not exported"
        assert job.attempts == {}  # the task returned: its start is no longer counted
    finally:
        get_settings.cache_clear()


@both_backends
def test_jobs_stuck_past_their_steps_deadline_are_requeued_once_per_deadline(store):
    import time

    from dicom_synth.jobstate import requeue_stuck

    _made(store, "export", S.EXPORTING)
    _made(store, "synth", S.RUNNING)
    _made(store, "done", S.DONE)
    deadlines = {TASK_CLASSIFY: 100.0, TASK_SYNTHESIZE: 1000.0, TASK_EXPORT: 100.0}
    now = time.time()
    assert requeue_stuck(store, _Sent(), deadlines, now=now) == []  # nothing is late yet
    sent = _Sent()
    assert requeue_stuck(store, sent, deadlines, now=now + 200) == [("export", TASK_EXPORT)] == sent
    assert store.get("export").status is S.EXPORTING
    # the requeue counts as a change: the next rounds wait a whole deadline again
    touched = store.get("export").updated_at
    assert touched >= now
    assert requeue_stuck(store, _Sent(), deadlines, now=touched + 50) == []
    assert requeue_stuck(store, _Sent(), deadlines, now=touched + 101) == [("export", TASK_EXPORT)]
    assert ("synth", TASK_SYNTHESIZE) in requeue_stuck(store, _Sent(), deadlines, now=now + 2000)
    assert store.get("synth").status is S.QUEUED and store.get("done").status is S.DONE
