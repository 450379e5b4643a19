"""The web console: the node's queue, timeline, quarantine, destinations and audit log in a
browser, with the same operations as the CLI, against the same journal.

A Starlette app with Jinja2 templates, served by uvicorn: a well-kept stack rather than a
hand-written server, and small (no front-end build; one short script refreshes the live parts).
Pages are for people, ``/api/`` is the same data as JSON for scripts. Every action is a POST,
needs the operator role and (from a browser) a CSRF token, and lands in the audit log.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from node import __version__
from node.errors import DicomNodeError
from node.service.journal import Job, JournalError, JournalStore, StateDirs
from node.service.operations.audit import audited
from node.service.operations.destinations import echo_now, pause, resume
from node.service.operations.jobs import cancel, delete_quarantined, release, retry
from node.service.operations.reports import status_report
from node.service.states import STATES
from node.web.auth import CSRF_COOKIE, TOKEN_COOKIE, Gate, Principal, csrf_ok, new_csrf

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
#: Longest free-text filter taken from a query string.
MAX_QUERY = 200


def _time(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def _age(at: float | None) -> str:
    if not at:
        return ""
    seconds = max(0.0, time.time() - at)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _job_json(job: Job) -> dict:
    out = job.as_json()
    out.pop("key", None)
    return out


class Console:
    """The app's state: the config, where the journal is, and how health and metrics are
    read (the running node's, or the journal's when the console runs alone)."""

    def __init__(self, config, gate: Gate, health: Callable[[], dict] | None = None,
                 metrics: Callable[[], tuple[bytes, str]] | None = None) -> None:
        self.config = config
        self.gate = gate
        self.dirs = StateDirs(config.node.state_dir)
        self.health = health or self._journal_health
        self.metrics = metrics or self._journal_metrics
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(time=_time, age=_age, version=__version__,
                                          states=STATES)
        for template in (HERE / "templates").glob("*.html"):  # compiled now, not on the first
            self.templates.get_template(template.name)      # request in the node's process

    def journal(self) -> JournalStore:
        return self.config.open_journal(create=False)  # a request never writes the schema

    def _journal_health(self) -> dict:
        try:
            with closing(self.journal()) as journal:
                counts = journal.counts()
        except Exception as exc:  # the journal is the console's only source
            return {"ok": False, "reason": f"journal unavailable: {type(exc).__name__}"}
        return {"ok": True, "console": True, "jobs": sum(counts.values())}

    def _journal_metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

        registry = CollectorRegistry()
        gauge = Gauge("dicom_node_jobs", "Jobs by state", ["state"], registry=registry)
        with closing(self.journal()) as journal:
            for state, count in journal.counts().items():
                gauge.labels(state).set(count)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    # --- plumbing ---------------------------------------------------------------------------

    def who(self, request: Request) -> Principal | None:
        return self.gate.principal(request.headers, request.cookies)

    def page(self, request: Request, name: str, who: Principal, status: int = 200,
             **context) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
        response = self.templates.TemplateResponse(
            request, name, {"who": who, "csrf": csrf, "show_phi": self.config.console.show_phi,
                            "flash": request.query_params.get("said", "")[:300], **context},
            status_code=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="strict")
        return response


def _viewer(handler):
    """A page or read-only API endpoint: any logged-in role; else the login page or 401."""
    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        who = console.who(request)
        if who is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "not authenticated"}, status_code=401)
            return RedirectResponse("/login?" + urlencode({"next": request.url.path}), 303)
        return await _run(handler, console, request, who)
    return endpoint


async def _run(handler, console, request, who):
    from starlette.concurrency import run_in_threadpool

    form = None
    if request.method == "POST":
        form = await request.form()
    return await run_in_threadpool(handler, console, request, who, form)


def _action(name: str, act: Callable[[Console, JournalStore, Request, Principal], object],
            target: Callable[[Request], str], back: Callable[[Request], str]):
    """An operator action, from a form (redirects back with what happened) or from /api/
    (JSON). 401 without a login, 403 for a viewer or without the CSRF token, 404 for a job that
    does not exist, 409 when the job is not in a state that allows it."""
    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        who = console.who(request)
        api = request.url.path.startswith("/api/")
        if who is None:
            return JSONResponse({"error": "not authenticated"}, status_code=401)
        form = await request.form() if not api else {}
        sent = request.headers.get("x-csrf-token") or (form.get("csrf") if form else None)
        if not who.bearer and not csrf_ok(request.cookies.get(CSRF_COOKIE), sent):
            return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        if not who.may_act:
            return JSONResponse({"error": "viewers cannot act"}, status_code=403)
        from starlette.concurrency import run_in_threadpool

        def work() -> tuple[int, str]:
            with closing(console.journal()) as journal:
                try:
                    result = audited(journal, who.name, "console", name, target(request),
                                     lambda: act(console, journal, request, who))
                except LookupError as exc:
                    return 404, str(exc)
                except DicomNodeError as exc:
                    code = 404 if "no such job" in exc.reason else 409
                    return code, exc.reason
            return 200, _said(result)

        code, said = await run_in_threadpool(work)
        if api:
            return JSONResponse({"ok": code == 200, "result" if code == 200 else "error": said},
                                status_code=code)
        return RedirectResponse(back(request) + "?" + urlencode({"said": said}), 303)
    return endpoint


def _said(result) -> str:
    if isinstance(result, Job):
        return f"job {result.id} is {result.state}"
    if isinstance(result, tuple):
        done, refused = result
        return f"requeued {len(done)} job(s)" + (f", refused {refused}" if refused else "")
    return str(result)


def _job_id(request: Request) -> int:
    return int(request.path_params["job_id"])


def _existing(journal: JournalStore, job_id: int) -> Job:
    job = journal.get(job_id)
    if job is None:
        raise LookupError(f"job {job_id}: no such job")
    return job


def _destination(console: Console, request: Request) -> str:
    name = request.path_params["name"]
    if name not in console.config.destinations:
        raise LookupError(f"no destination {name!r}")
    return name


# --- pages ----------------------------------------------------------------------------------

def dashboard(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        report = status_report(journal, console.config)
        chart = journal.done_per_bucket(time.time() - 3600, 300)
    return console.page(request, "dashboard.html", who, report=report, chart=chart,
                        chart_max=max(chart) or 1)


def _filters(request: Request) -> dict:
    q = request.query_params
    state = q.get("state") if q.get("state") in STATES else None
    destination = (q.get("destination") or "")[:100] or None
    text = (q.get("q") or "")[:MAX_QUERY] or None
    try:
        page = max(1, min(int(q.get("page", "1")), 10**6))
    except ValueError:
        page = 1
    return {"state": state, "destination": destination, "text": text, "page": page,
            "date": _day(q.get("date"))}


def _day(value: str | None) -> str | None:
    """A YYYY-MM-DD filter, or None for anything else."""
    if not value:
        return None
    try:
        time.strptime(value[:10], "%Y-%m-%d")
    except ValueError:
        return None
    return value[:10]


def _day_range(day: str | None) -> dict:
    if day is None:
        return {}
    start = time.mktime(time.strptime(day, "%Y-%m-%d"))
    return {"since": start, "until": start + 86400}


def jobs_page(console: Console, request: Request, who: Principal, _form) -> Response:
    f = _filters(request)
    with closing(console.journal()) as journal:
        jobs, total = journal.find_jobs(f["state"], f["destination"], f["text"], PAGE_SIZE,
                                        (f["page"] - 1) * PAGE_SIZE, **_day_range(f["date"]))
    pages = max(1, -(-total // PAGE_SIZE))
    keep = {k: v for k, v in (("state", f["state"]), ("destination", f["destination"]),
                              ("q", f["text"]), ("date", f["date"])) if v}
    return console.page(request, "jobs.html", who, jobs=jobs, total=total, pages=pages,
                        filters=f, query=urlencode(keep),
                        destinations=sorted(console.config.destinations))


def job_page(console: Console, request: Request, who: Principal, _form) -> Response:
    job_id = _job_id(request)
    with closing(console.journal()) as journal:
        job = journal.get(job_id)
        if job is None:
            return console.page(request, "missing.html", who, 404, what=f"job {job_id}")
        history = journal.history(job_id)
        delivered = journal.delivered_instances(job_id)
        copies = sorted([job, *journal.siblings(job)], key=lambda j: j.id)
    preview = console.dirs.preview(job_id).is_file()
    return console.page(request, "job.html", who, job=job, history=history,
                        delivered=len(delivered), preview=preview, copies=copies)


def preview_png(console: Console, request: Request, who: Principal, _form) -> Response:
    path = console.dirs.preview(_job_id(request))
    if not path.is_file():
        return PlainTextResponse("no preview for this job\n", status_code=404)
    return FileResponse(path, media_type="image/png")


def quarantine_page(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        items = journal.jobs("quarantined")
    files = {}
    for job in items:
        folder = Path(job.quarantine_path) if job.quarantine_path else None
        files[job.id] = sorted(p.name for p in folder.iterdir())[:50] if (
            folder and folder.is_dir()) else []
    return console.page(request, "quarantine.html", who, items=items, files=files)


def destinations_page(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        report = status_report(journal, console.config)
    return console.page(request, "destinations.html", who,
                        destinations=[d for d in report["destinations"]
                                      if d["name"] in console.config.destinations],
                        configured=console.config.destinations)


def audit_page(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        rows = journal.audit_log(500)
    return console.page(request, "audit.html", who, rows=rows)


def audit_csv(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        rows = journal.audit_log(100_000)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "time", "who", "via", "action", "target", "result"])
    for r in reversed(rows):
        writer.writerow([r["id"], _time(r["at"]), r["who"], r["via"], r["action"], r["target"],
                         r["result"]])
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})


# --- JSON for scripts -------------------------------------------------------------------------

def api_jobs(console: Console, request: Request, who: Principal, _form) -> Response:
    f = _filters(request)
    with closing(console.journal()) as journal:
        jobs, total = journal.find_jobs(f["state"], f["destination"], f["text"], PAGE_SIZE,
                                        (f["page"] - 1) * PAGE_SIZE, **_day_range(f["date"]))
    return JSONResponse({"jobs": [_job_json(j) for j in jobs], "total": total,
                         "page": f["page"], "page_size": PAGE_SIZE})


def api_job(console: Console, request: Request, who: Principal, _form) -> Response:
    job_id = _job_id(request)
    with closing(console.journal()) as journal:
        job = journal.get(job_id)
        if job is None:
            return JSONResponse({"error": f"job {job_id}: no such job"}, status_code=404)
        history = journal.history(job_id)
    keys = ("at", "from", "to", "attempt", "owner", "detail")
    return JSONResponse({**_job_json(job),
                         "timeline": [dict(zip(keys, row, strict=True)) for row in history]})


def api_status(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        return JSONResponse(status_report(journal, console.config))


def api_audit(console: Console, request: Request, who: Principal, _form) -> Response:
    with closing(console.journal()) as journal:
        return JSONResponse({"audit": journal.audit_log(500)})


# --- login, health, metrics -----------------------------------------------------------------

async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    if request.method == "GET":
        return console.templates.TemplateResponse(
            request, "login.html", {"who": None, "csrf": "", "mode": console.gate.mode,
                                    "next": request.query_params.get("next", "/"),
                                    "flash": "", "show_phi": False})
    form = await request.form()
    token = str(form.get("token", ""))[:512]
    who = console.gate.principal({"authorization": f"Bearer {token}"}, {})
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # never an open redirect
    client = request.client.host if request.client else "unknown"
    await _login_event(console, who.name if who else f"unknown user from {client}",
                       who is not None)
    if who is None:
        return console.templates.TemplateResponse(
            request, "login.html", {"who": None, "csrf": "", "mode": console.gate.mode,
                                    "next": target, "flash": "That token is not valid.",
                                    "show_phi": False}, status_code=401)
    response = RedirectResponse(target, 303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response


async def _login_event(console: Console, user: str, ok: bool) -> None:
    """A console login, or a refused one, is an event (an audit collector's User
    Authentication; a refusal also a Security Alert). Never a reason to fail the login."""
    from starlette.concurrency import run_in_threadpool

    def record() -> None:
        with closing(console.journal()) as journal:
            journal.record_event("console.login", user, "ok" if ok else "failed")
            if not ok:
                journal.record_event("access.refused", user, "failed", "console login refused")

    try:
        await run_in_threadpool(record)
    except Exception:  # the journal away: the login itself is not refused for it
        logging.getLogger("node.web").warning("console login not recorded as an event")


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(TOKEN_COOKIE)
    return response


async def healthz(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    state = await run_in_threadpool(request.app.state.console.health)
    return JSONResponse(state, status_code=200 if state.get("ok") else 503)


async def metrics(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    body, ctype = await run_in_threadpool(request.app.state.console.metrics)
    return Response(body, media_type=ctype)


async def not_found(request: Request, exc) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "not found"}, status_code=404)
    return PlainTextResponse("not found\n", status_code=404)


async def journal_unusable(request: Request, exc: Exception) -> Response:
    """A journal the console cannot read (behind this release's schema, from a newer one,
    unreachable): 503 with the one line that says what to do, never a traceback."""
    reason = getattr(exc, "message", str(exc))
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": reason}, status_code=503)
    return PlainTextResponse(f"{reason}\n", status_code=503)


def create_app(config, health: Callable[[], dict] | None = None,
               metrics_source: Callable[[], tuple[bytes, str]] | None = None) -> Starlette:
    """The console for ``config``'s journal. Raises ConsoleStartError when its settings are
    unsafe (a public address without authentication)."""
    console = Console(config, Gate.from_settings(config.console), health, metrics_source)

    def job_target(request: Request) -> str:
        return f"job {request.path_params['job_id']}"

    def dest_target(request: Request) -> str:
        return str(request.path_params["name"])

    def to_job(request: Request) -> str:
        return f"/jobs/{request.path_params['job_id']}"

    def checked(act):
        def run(console, journal, request, who):
            _existing(journal, _job_id(request))
            return act(journal, _job_id(request))
        return run

    actions = {
        "retry": (lambda c, j, r, w: retry(j, [_existing(j, _job_id(r)).id]), job_target, to_job),
        "cancel": (checked(cancel), job_target, to_job),
        "release": (checked(release), job_target, lambda r: "/quarantine"),
        "delete": (checked(delete_quarantined), job_target, lambda r: "/quarantine"),
    }
    routes = [
        Route("/", _viewer(dashboard)),
        Route("/jobs", _viewer(jobs_page)),
        Route("/jobs/{job_id:int}", _viewer(job_page)),
        Route("/jobs/{job_id:int}/preview.png", _viewer(preview_png)),
        Route("/quarantine", _viewer(quarantine_page)),
        Route("/destinations", _viewer(destinations_page)),
        Route("/audit", _viewer(audit_page)),
        Route("/audit.csv", _viewer(audit_csv)),
        Route("/api/jobs", _viewer(api_jobs)),
        Route("/api/jobs/{job_id:int}", _viewer(api_job)),
        Route("/api/status", _viewer(api_status)),
        Route("/api/audit", _viewer(api_audit)),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    for verb, (act, target, back) in actions.items():
        base = "/quarantine/{job_id:int}" if verb in ("release", "delete") else (
            "/jobs/{job_id:int}")
        endpoint = _action(f"{'quarantine ' if base.startswith('/q') else ''}{verb}", act,
                           target, back)
        routes.append(Route(f"{base}/{verb}", endpoint, methods=["POST"]))
        routes.append(Route(f"/api{base}/{verb}", endpoint, methods=["POST"]))
    retry_all = _action("retry", lambda c, j, r, w: retry(j, None),
                        lambda r: "every failed job", lambda r: "/jobs")
    routes += [Route("/jobs/retry-failed", retry_all, methods=["POST"]),
               Route("/api/jobs/retry-failed", retry_all, methods=["POST"])]
    destination_actions = {
        "pause": lambda c, j, r, w: pause(j, c.config, _destination(c, r), w.name),
        "resume": lambda c, j, r, w: resume(j, c.config, _destination(c, r)),
        "echo": lambda c, j, r, w: echo_now(j, c.config, _destination(c, r)),
    }
    for verb, act in destination_actions.items():
        endpoint = _action(verb, act, dest_target, lambda r: "/destinations")
        routes.append(Route(f"/destinations/{{name}}/{verb}", endpoint, methods=["POST"]))
        routes.append(Route(f"/api/destinations/{{name}}/{verb}", endpoint, methods=["POST"]))
    routes.append(Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"))
    app = Starlette(routes=routes, exception_handlers={404: not_found,
                                                       JournalError: journal_unusable})
    app.state.console = console
    return app


def serve(app: Starlette, host: str, port: int, *, block: bool = True):
    """Run the console with uvicorn: in this thread (``block``), or in a daemon thread whose
    server is returned once it listens (inside ``dicom-node watch``). Connections are bounded
    (``limit_concurrency``) and idle keep-alives closed after 5 s."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        limit_concurrency=64, timeout_keep_alive=5, server_header=False))
    if block:
        server.run()
        return server
    thread = threading.Thread(target=server.run, daemon=True, name="console")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise OSError(f"the console could not listen on {host}:{port}")
    return server
