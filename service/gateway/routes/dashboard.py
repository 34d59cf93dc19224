"""The dashboard's pages (service/dashboard): jobs at `/`, a job's page, models, health,
and the login form that turns a token into a session cookie. Handlers are thin: the
search is dicom_synth.jobsearch, the previews, timeline, cards and session are in
service.dashboard, the actions in service.jobactions, the checks in service.healthchecks.
Only the JSON API's paths are in the OpenAPI schema; these are pages."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from dicom_synth.domain import JobStatus, Task
from dicom_synth.jobsearch import PAGE_SIZE, JobQuery, find_jobs, patient_values, search_key
from dicom_synth.settings import job_input_dir
from service import jobactions
from service.dashboard import TEMPLATES_DIR, cards, previews, session, timeline
from service.dashboard.format import FILTERS, flatten
from service.gateway.auth import LOGIN_PATH, authenticate, requires
from service.gateway.deps import JobStoreDep, SettingsDep
from service.healthchecks import dashboard_checks

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters.update(FILTERS)
READ, ADMIN = [requires("read")], [requires("admin")]
POLL_MS = 1000
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""Every page's Content-Security-Policy: its own assets only, no inline script."""
SUMMARY = ("confidence", "fused_probabilities", "reason", "rule")  # the classifier's evidence shown unfolded


def _page(request: Request, settings, name: str, status_code: int = 200, **context) -> HTMLResponse:
    principal = request.state.principal
    return templates.TemplateResponse(request, name, {
        "principal": principal, "may_admin": principal.may("admin"), "auth_on": settings.auth != "off",
        "logged_in": session.session_of(request) is not None, "csrf": session.csrf_token(settings, request),
        "poll_ms": POLL_MS, **context}, status_code=status_code, headers={"Content-Security-Policy": CSP})


def _day(text: str | None, name: str) -> float | None:
    """The start of a local calendar day (YYYY-MM-DD), epoch seconds."""
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time()).timestamp()
    except ValueError:
        raise HTTPException(422, f"{name}: expected a date YYYY-MM-DD, got {text!r}") from None


def _job_query(state: str | None, task: str | None, ae: str | None, date_from: str | None, date_to: str | None,
               q: str | None, page: int, key: bytes) -> JobQuery:
    if state and state not in set(JobStatus):
        raise HTTPException(422, f"state: one of {', '.join(JobStatus)}")
    until = _day(date_to, "date_to")
    return JobQuery(status=state or None, task=task or None, calling_ae=(ae or "").strip() or None,
                    since=_day(date_from, "date_from"),
                    until=None if until is None else (datetime.fromtimestamp(until) + timedelta(days=1)).timestamp(),
                    text=(q or "").strip() or None, key=key, limit=PAGE_SIZE, offset=max(0, page - 1) * PAGE_SIZE)


def _jobs_context(settings, store, state, task, ae, date_from, date_to, q, page) -> dict:
    found = find_jobs(store, _job_query(state, task, ae, date_from, date_to, q, page, search_key(settings)))
    filters = {"state": state or "", "task": task or "", "ae": ae or "", "date_from": date_from or "",
               "date_to": date_to or "", "q": q or ""}
    return {"found": found, "filters": filters, "page": max(1, page), "now": time.time(),
            "states": list(JobStatus), "tasks": list(Task)}


@router.get("/", dependencies=READ, response_class=HTMLResponse)
def jobs_page(request: Request, store: JobStoreDep, settings: SettingsDep, state: str | None = None,
              task: str | None = None, ae: str | None = None, date_from: str | None = None,
              date_to: str | None = None, q: str | None = None, page: int = 1) -> HTMLResponse:
    return _page(request, settings, "jobs.html", nav="jobs",
                 **_jobs_context(settings, store, state, task, ae, date_from, date_to, q, page))


@router.get("/dashboard/live/jobs", dependencies=READ, response_class=HTMLResponse)
def jobs_fragment(request: Request, store: JobStoreDep, settings: SettingsDep, state: str | None = None,
                  task: str | None = None, ae: str | None = None, date_from: str | None = None,
                  date_to: str | None = None, q: str | None = None, page: int = 1) -> HTMLResponse:
    """The job list's results alone, for the page's polling."""
    return _page(request, settings, "_jobs_results.html",
                 **_jobs_context(settings, store, state, task, ae, date_from, date_to, q, page))


def _job(store, job_id: str):
    try:
        return jobactions.get_job(store, job_id)
    except jobactions.Refused as refused:
        raise HTTPException(refused.status, refused.detail) from None


def _job_context(settings, job) -> dict:
    now = time.time()
    evidence = dict(job.evidence or {})
    domain = evidence.pop("domain", None)
    shown = list(flatten(evidence))
    return {"job": job, "steps": timeline.steps(job, now), "total": timeline.total_seconds(job, now),
            "evidence": shown, "evidence_summary": [row for row in shown if row[0].split(" › ")[0] in SUMMARY],
            "domain": domain, "now": now, "final": job.status.is_final,
            "resendable": settings.pacs is not None and job.status in jobactions.RESENDABLE
            and bool(job.output_series_uids) and not job.purged,
            "retryable": job.status in jobactions.RETRYABLE and not job.purged}


@router.get("/dashboard/jobs/{job_id}", dependencies=READ, response_class=HTMLResponse)
def job_page(request: Request, job_id: str, store: JobStoreDep, settings: SettingsDep) -> HTMLResponse:
    job = _job(store, job_id)
    kept = sorted(job_input_dir(settings, job.job_id).glob("*")) if not job.purged else []
    return _page(request, settings, "job.html", nav="jobs", previews=previews.previews(settings, job),
                 patient=patient_values(kept), **_job_context(settings, job))


@router.get("/dashboard/live/jobs/{job_id}", dependencies=READ, response_class=HTMLResponse)
def job_fragment(request: Request, job_id: str, store: JobStoreDep, settings: SettingsDep) -> HTMLResponse:
    """The job page's status and timeline alone, for its polling."""
    return _page(request, settings, "_job_live.html", **_job_context(settings, _job(store, job_id)))


@router.get("/dashboard/previews/{job_id}/{key}/{row}.png", dependencies=READ, response_class=Response)
def preview_png(job_id: str, key: str, row: int, store: JobStoreDep, settings: SettingsDep) -> Response:
    """One preview: row `row` of the input (`input`) or of an output (its folder name)."""
    grid = previews.previews(settings, _job(store, job_id))
    series = grid.find(key) if grid is not None else None
    if series is None or not 0 <= row < len(series.slices):
        raise HTTPException(404, f"job {job_id} has no preview {key}/{row}")
    return Response(previews.render_png(series.slices[row]), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=60"})


@router.get("/dashboard/jobs/{job_id}/result.zip", dependencies=READ, response_class=StreamingResponse)
def result_zip(job_id: str, store: JobStoreDep, settings: SettingsDep) -> StreamingResponse:
    try:
        buf = jobactions.result_zip(settings, _job(store, job_id))
    except jobactions.Refused as refused:
        raise HTTPException(refused.status, refused.detail) from None
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.zip"'}
    return StreamingResponse(buf, media_type="application/zip", headers=headers)


def _act(request: Request, settings, store, job_id: str, csrf: str | None, action) -> Response:
    if not session.csrf_ok(settings, request, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    try:
        job = action(store, settings, job_id)
    except jobactions.Refused as refused:
        return _page(request, settings, "message.html", status_code=refused.status, nav="jobs",
                     title="Not done", message=refused.detail, back=f"/dashboard/jobs/{job_id}")
    return RedirectResponse(f"/dashboard/jobs/{job.job_id}", status_code=303)


@router.post("/dashboard/jobs/{job_id}/resend", dependencies=ADMIN)
def resend(request: Request, job_id: str, store: JobStoreDep, settings: SettingsDep,
           csrf: Annotated[str | None, Form()] = None) -> Response:
    return _act(request, settings, store, job_id, csrf, jobactions.resend)


@router.post("/dashboard/jobs/{job_id}/retry", dependencies=ADMIN)
def retry(request: Request, job_id: str, store: JobStoreDep, settings: SettingsDep,
          csrf: Annotated[str | None, Form()] = None) -> Response:
    """A new job from this one's kept input; answers with the new job's page."""
    return _act(request, settings, store, job_id, csrf, jobactions.retry)


@router.get("/dashboard/models", dependencies=READ, response_class=HTMLResponse)
def models_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    return _page(request, settings, "models.html", nav="models", cards=cards.card_views(settings))


@router.get("/dashboard/health", dependencies=READ, response_class=HTMLResponse)
def health_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    return _page(request, settings, "health.html", nav="health", checks=dashboard_checks(settings),
                 now=time.time())


def _login_form(request: Request, settings, target: str, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    nonce = session.new_login_nonce()
    response = templates.TemplateResponse(request, "login.html", {
        "next": target, "error": error, "auth_on": settings.auth != "off", "nav": "login", "nonce": nonce},
        status_code=status_code, headers={"Content-Security-Policy": CSP})
    session.keep_login_nonce(request, response, nonce)
    return response


@router.get(LOGIN_PATH, response_class=HTMLResponse)
def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> HTMLResponse:  # noqa: A002
    return _login_form(request, settings, session.safe_next(next))


@router.post(LOGIN_PATH, response_class=HTMLResponse)
def login(request: Request, settings: SettingsDep, token: Annotated[str, Form()] = "",
          nonce: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:  # noqa: A002
    """Check the token; a valid one with the `read` scope becomes the session cookie."""
    target = session.safe_next(next)
    if not session.login_nonce_ok(request, nonce):
        return _login_form(request, settings, target, "The form expired: try again.", 403)
    principal = authenticate(settings, token.strip()) if token.strip() else None
    if principal is None or not principal.may("read"):
        why = "That token is not valid." if principal is None else "That token lacks the read scope."
        return _login_form(request, settings, target, why, 401 if principal is None else 403)
    response = RedirectResponse(target, status_code=303)
    session.set_session(request, response, token.strip())
    return response


@router.post("/dashboard/logout", dependencies=READ)
def logout(request: Request, settings: SettingsDep, csrf: Annotated[str | None, Form()] = None) -> Response:
    if not session.csrf_ok(settings, request, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong")
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    session.end_session(request, response)
    return response
