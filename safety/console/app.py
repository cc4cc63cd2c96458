"""The approval console's web application: server-rendered pages over an :class:`ApprovalStore` and the
deployments of a :class:`~safety.deployments.DeploymentStore` in the same database.

Routes (all but ``/login`` and ``/static`` need a logged-in user; every POST needs the session's CSRF
token): ``GET /`` the queue of pending programs, ``GET /programs`` all programs, ``GET /program/{id}`` one
program (preview, simulation, findings, diff, decision form), ``GET /program/{id}/source`` its numbered
listing page by page, ``GET /program/{id}/gcode`` its bytes, ``POST /program/{id}/decision`` (reviewers),
``GET|POST /submit``, ``GET /audit``, ``GET|POST /login``, ``POST /logout``, ``POST /logout-everywhere``
(revokes all of the user's sessions), ``GET /deployments``, ``GET /deployment/{id}`` a deployment's live
page, ``GET /deployment/{id}/live.json`` what the page polls (:func:`safety.console.live.snapshot`),
``POST /deployment/{id}/request`` an operator's request (operators), ``POST /deployment/{id}/label`` an
operator's verdict on a finished print (the real-world dataset's label). Ids are integers; no route takes a
file name or path. Every action, and every refusal of one, is a row of the action log
(:mod:`safety.console.activity`).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException

from safety.accounts import OPERATOR, REVIEWER
from safety.approvals import ApprovalError, ApprovalStore, Program, UnknownProgram
from safety.console.activity import (
    LOGIN,
    LOGIN_FAILED,
    LOGIN_REFUSED,
    REFUSED,
    ActivityLog,
    login_retry_at,
)
from safety.console.config import ConsoleConfig
from safety.console.live import deployment_list, may_confirm_first_layer, snapshot, utc
from safety.console.preview import (
    LISTING_PAGE_LINES,
    expert_diff,
    gcode_lines,
    layer_svg,
    line_href,
    temperature_svg,
)
from safety.console.security import CSRF_FIELD, SESSION_COOKIE, BodyLimit, Session, Sessions, csrf_ok
from safety.database import StoreError
from safety.deployments import REQUESTS, DeploymentStore
from safety.gate import GateLog
from sim_bridge.printers import bundled_printers

HERE = Path(__file__).parent
PUBLIC_PATHS = ("/login", "/static")
"""Path prefixes served without a login."""
SECURITY_HEADERS = {
    # No script, no external resource, no framing: the console loads only its own stylesheet.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LIVE_PAGE_CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
                 "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The live page alone runs a script: the console's own ``/static/live.js``, which polls its JSON."""
FINISHED_STATES = ("complete", "cancelled", "error")
"""Deployment states whose print can be labelled."""
MAX_LABEL_CHARS = 2000
REQUEST_LABELS = {"confirm-first-layer": "confirm first layer", "pause": "pause", "resume": "resume",
                  "abort": "abort", "estop": "emergency stop"}
MAX_CONFIRM_COMMENT_CHARS = 2000
ROLE_ARTICLES = {REVIEWER: "a reviewer", OPERATOR: "an operator"}
AUDIT_PAGE_ACTIONS = 500
"""The newest console actions the audit page lists (the CLI's ``actions`` prints them all)."""


class LoginRequired(Exception):
    """The request needs a logged-in user and has none."""


def session_of(request: Request) -> Session | None:
    """The request's session, if its cookie carries a valid one: signed, not expired, and for a logged-in
    user, a user who exists and whose sessions were not revoked since it was made."""
    sessions: Sessions = request.app.state.sessions
    session = sessions.read(request.cookies.get(SESSION_COOKIE))
    if session is None or session.user is None:
        return session
    store: ApprovalStore = request.app.state.store
    # A deleted user's cookie, or one issued before a revocation, stops working at once.
    if store.accounts.session_generation(session.user) != session.generation:
        return None
    return session


def require_user(request: Request) -> Session:
    """The logged-in user's session; :class:`LoginRequired` otherwise."""
    session = session_of(request)
    if session is None or session.user is None:
        raise LoginRequired
    return session


def client_of(request: Request) -> str:
    """The client's address as the console sees it (a proxy in front makes every client the proxy)."""
    return request.client.host if request.client else "?"


def window_text(window_s: float) -> str:
    """``900`` → ``15 min``; ``2.5`` → ``2.5 s``."""
    return f"{window_s / 60:g} min" if window_s >= 60 else f"{window_s:g} s"


CurrentUser = Annotated[Session, Depends(require_user)]
FormText = Annotated[str, Form()]
OptionalFile = Annotated[UploadFile | None, File()]


def create_app(store: ApprovalStore, config: ConsoleConfig, secret: bytes) -> FastAPI:
    """The console for one store. ``secret`` signs the session cookies
    (:func:`~safety.console.security.load_or_create_secret`)."""
    app = FastAPI(title="layerloop approval console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    sessions = Sessions(secret, config.session_max_age_s)
    app.state.sessions = sessions
    app.state.store = store
    activity = ActivityLog(store.path)
    deployments = DeploymentStore(store.path)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))

    def render(name: str, request: Request, session: Session | None, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        roles = store.accounts.roles(session.user) if session is not None and session.user else ()
        html = env.get_template(name).render(request=request, session=session, csrf_field=CSRF_FIELD,
                                             roles=roles, **context)
        return HTMLResponse(html, status_code=status_code)

    def set_session(response: Response, cookie: str) -> None:
        response.set_cookie(SESSION_COOKIE, cookie, max_age=config.session_max_age_s, path="/",
                            httponly=True, samesite="strict", secure=config.secure_cookie)

    def record(request: Request, session: Session | None, action: str, target: str = "", outcome: str = "done",
               **detail: Any) -> None:
        activity.record((session.user if session else None) or "", client_of(request), action, target, outcome,
                        **detail)

    def require_csrf(request: Request, session: Session, token: str) -> None:
        if not csrf_ok(session, token):
            record(request, session, "csrf", request.url.path, REFUSED, method=request.method)
            raise HTTPException(403, "Missing or wrong CSRF token: reload the page and try again.")

    def require_role(request: Request, session: Session, role: str, action: str, target: str) -> None:
        if not store.accounts.has_role(session.user or "", role):
            record(request, session, action, target, REFUSED, reason=f"not a {role}")
            raise HTTPException(403, f"Your account ({session.user}) is not {ROLE_ARTICLES[role]}: only "
                                     f"{ROLE_ARTICLES[role]} may {REQUEST_LABELS.get(action, action)}.")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        # A write from a stranger is refused before its body is read, so uploads need a login too.
        if request.method not in ("GET", "HEAD") and not request.url.path.startswith(PUBLIC_PATHS):
            session = session_of(request)
            if session is None or session.user is None:
                return PlainTextResponse("401 Unauthorized: log in first.", status_code=401)
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    # Outermost, so an oversized body is refused before anything else reads it.
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if request.method in ("GET", "HEAD"):
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("401 Unauthorized: log in first.", status_code=401)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return render("error.html", request, None, status_code=exc.status_code, status=exc.status_code,
                      message=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, _exc: RequestValidationError) -> Response:
        # Not FastAPI's default, which echoes the offending input back.
        return render("error.html", request, None, status_code=422, status=422,
                      message="Malformed request: program ids and layer numbers are whole numbers.")

    # -- login -----------------------------------------------------------------------------------------
    @app.get("/login")
    def login_form(request: Request) -> Response:
        session = session_of(request)
        if session is not None and session.user is not None:
            return RedirectResponse("/", status_code=303)
        anonymous, cookie = sessions.new(None)
        response = render("login.html", request, anonymous, error="")
        set_session(response, cookie)
        return response

    @app.post("/login")
    def login(request: Request, username: FormText = "", password: FormText = "",
              csrf_token: FormText = "") -> Response:
        session = session_of(request)
        if session is None:
            raise HTTPException(403, "Your login form expired: reload the login page.")
        require_csrf(request, session, csrf_token)
        # A name that is no user is logged as '' (it may be a password typed in the wrong field) and
        # limited by address only.
        known = username if store.accounts.has_user(username) else ""
        target = f"user:{known}" if known else ""
        retry_at = login_retry_at(activity, known, client_of(request), config.login_max_failures,
                                  config.login_window_s)
        if retry_at is not None:
            wait_s = max(1, math.ceil(retry_at - time.time()))
            activity.record(known, client_of(request), LOGIN_REFUSED, target, REFUSED, retry_after_s=wait_s)
            response = render("login.html", request, session, status_code=429, error=(
                f"Too many failed logins for this user name or from this address ({config.login_max_failures} "
                f"within {window_text(config.login_window_s)}): try again after {utc(retry_at)} "
                f"(in {wait_s} s)."))
            response.headers["Retry-After"] = str(wait_s)
            return response
        if not store.accounts.check_password(username, password):
            activity.record(known, client_of(request), LOGIN_FAILED, target, REFUSED,
                            reason="wrong password" if known else "unknown user name")
            return render("login.html", request, session, status_code=401, error="Wrong user name or password.")
        # A new session (and CSRF token) at login, so a token seen before login is worth nothing after.
        _, cookie = sessions.new(username, store.accounts.session_generation(username) or 0)
        activity.record(username, client_of(request), LOGIN, target)
        response = RedirectResponse("/", status_code=303)
        set_session(response, cookie)
        return response

    def logged_out() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    def logout(request: Request, session: CurrentUser, csrf_token: FormText = "") -> Response:
        require_csrf(request, session, csrf_token)
        record(request, session, "logout", f"user:{session.user}")
        return logged_out()

    @app.post("/logout-everywhere")
    def logout_everywhere(request: Request, session: CurrentUser, csrf_token: FormText = "") -> Response:
        require_csrf(request, session, csrf_token)
        generation = store.accounts.revoke_sessions(session.user or "", by=session.user or "")
        record(request, session, "revoke-sessions", f"user:{session.user}", generation=generation)
        return logged_out()

    # -- pages -----------------------------------------------------------------------------------------
    @app.get("/")
    def queue(request: Request, session: CurrentUser) -> Response:
        return render("queue.html", request, session, title="Pending programs", programs=store.pending(),
                      show_all=False)

    @app.get("/programs")
    def all_programs(request: Request, session: CurrentUser) -> Response:
        return render("queue.html", request, session, title="All programs", programs=store.programs(),
                      show_all=True)

    def load(program_id: int) -> Program:
        try:
            return store.program(program_id)
        except UnknownProgram:
            raise HTTPException(404, f"No program {program_id}.") from None

    @app.get("/program/{program_id}")
    def program_page(request: Request, program_id: int, session: CurrentUser, layer: int = 0) -> Response:
        return render_program(request, session, load(program_id), layer)

    def render_program(request: Request, session: Session, p: Program, layer: int, error: str = "",
                       comment: str = "", status_code: int = 200) -> Response:
        lines = gcode_lines(p.gcode)
        layers = p.preview.get("layers") or []
        position = min(max(layer, 0), max(len(layers) - 1, 0))
        expert = None if p.expert_gcode is None else gcode_lines(p.expert_gcode)
        failures_here = [f for f in p.report.get("failures", [])
                         if layers and f.get("layer") == layers[position]["index"]]
        return render(
            "program.html", request, session, status_code=status_code, p=p, lines=lines,
            inline_listing=len(lines) <= LISTING_PAGE_LINES, href=lambda n: line_href(p.id, n, len(lines)),
            layers=layers, position=position, svg=layer_svg(p.preview, position) if layers else None,
            failures_here=failures_here, temps=temperature_svg(p.preview.get("traces") or {}),
            diff=expert_diff(lines, expert), error=error, comment=comment,
            pages=math.ceil(len(lines) / LISTING_PAGE_LINES))

    @app.get("/program/{program_id}/source")
    def source(request: Request, program_id: int, session: CurrentUser, page: int = 0) -> Response:
        p = load(program_id)
        lines = gcode_lines(p.gcode)
        pages = max(1, math.ceil(len(lines) / LISTING_PAGE_LINES))
        if not 0 <= page < pages:
            raise HTTPException(404, f"Program {p.id} has listing pages 0 to {pages - 1}.")
        first = page * LISTING_PAGE_LINES
        return render("source.html", request, session, p=p, lines=lines[first:first + LISTING_PAGE_LINES],
                      first_line=first + 1, page=page, pages=pages)

    @app.get("/program/{program_id}/gcode")
    def download(program_id: int, session: CurrentUser) -> Response:
        p = load(program_id)
        return Response(p.gcode, media_type="text/plain; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="program-{p.id}-{p.sha256[:12]}.gcode"'})

    @app.post("/program/{program_id}/decision")
    def decide(request: Request, program_id: int, session: CurrentUser,
               decision: FormText = "", comment: FormText = "", csrf_token: FormText = "") -> Response:
        require_csrf(request, session, csrf_token)
        p = load(program_id)
        target = f"program:{p.id}"
        if not store.accounts.has_role(session.user or "", REVIEWER):
            record(request, session, decision or "decision", target, REFUSED, reason=f"not a {REVIEWER}")
            return render_program(request, session, p, 0, comment=comment, status_code=403,
                                  error=f"Your account ({session.user}) is not a {REVIEWER}: only a reviewer "
                                        "approves or rejects.")
        try:
            row = store.decide(p.id, session.user or "", decision, comment,
                               submitter_may_approve=config.submitter_may_approve)
        except ApprovalError as exc:
            record(request, session, decision or "decision", target, REFUSED, reason=str(exc))
            return render_program(request, session, p, 0, error=str(exc), comment=comment, status_code=409)
        record(request, session, row.decision, target, sha256=row.sha256, audit_id=row.id)
        return RedirectResponse(f"/program/{p.id}", status_code=303)

    @app.get("/audit")
    def audit(request: Request, session: CurrentUser) -> Response:
        return render("audit.html", request, session, rows=list(reversed(store.audit())),
                      actions=list(reversed(activity.rows(limit=AUDIT_PAGE_ACTIONS))),
                      most=AUDIT_PAGE_ACTIONS)

    @app.get("/submit")
    def submit_form(request: Request, session: CurrentUser) -> Response:
        return render("submit.html", request, session, printers=bundled_printers(), error="",
                      max_mib=config.max_upload_mib, form={})

    @app.post("/submit")
    async def submit(request: Request, session: CurrentUser,
                     program: OptionalFile = None, expert: OptionalFile = None,
                     printer: FormText = "", job: FormText = "", description: FormText = "",
                     csrf_token: FormText = "") -> Response:
        require_csrf(request, session, csrf_token)
        form = {"printer": printer, "job": job, "description": description}

        def again(message: str, status_code: int) -> Response:
            return render("submit.html", request, session, status_code=status_code, printers=bundled_printers(),
                          error=message, max_mib=config.max_upload_mib, form=form)

        # Only bundled profiles: a profile name from the web must never become a path on this machine.
        if printer not in bundled_printers():
            return again(f"Printer {printer!r}: choose one of {', '.join(bundled_printers())}.", 400)
        gcode = await program.read() if program is not None else b""
        if not gcode:
            return again("Choose a G-code file to submit.", 400)
        expert_gcode = (await expert.read() or None) if expert is not None else None
        try:
            program_id = await run_in_threadpool(
                store.submit, gcode, printer=printer, job=job, description=description,
                expert_gcode=expert_gcode, submitted_by=session.user or "")
        except ApprovalError as exc:
            record(request, session, "submit", "", REFUSED, reason=str(exc), job=job[:200])
            return again(str(exc), 400)
        record(request, session, "submit", f"program:{program_id}", job=job[:200], printer=printer)
        return RedirectResponse(f"/program/{program_id}", status_code=303)

    # -- deployments -----------------------------------------------------------------------------------
    @app.get("/deployments")
    def deployments_page(request: Request, session: CurrentUser) -> Response:
        return render("deployments.html", request, session, rows=deployment_list(deployments))

    def load_deployment(deployment_id: int) -> dict[str, Any]:
        try:
            return snapshot(deployments, deployment_id)
        except StoreError:
            raise HTTPException(404, f"No deployment {deployment_id}.") from None

    def render_deployment(request: Request, session: Session, deployment_id: int, error: str = "",
                          done: str = "", status_code: int = 200) -> Response:
        response = render("deployment.html", request, session, status_code=status_code,
                          live=load_deployment(deployment_id), error=error, done=done, labels=REQUEST_LABELS,
                          operator=store.accounts.has_role(session.user or "", OPERATOR),
                          poll_ms=int(config.live_poll_s * 1000))
        response.headers["Content-Security-Policy"] = LIVE_PAGE_CSP
        return response

    @app.get("/deployment/{deployment_id}")
    def deployment_page(request: Request, deployment_id: int, session: CurrentUser, done: str = "") -> Response:
        return render_deployment(request, session, deployment_id,
                                 done=done if done in REQUESTS or done == "label" else "")

    @app.get("/deployment/{deployment_id}/live.json")
    def deployment_live(deployment_id: int, session: CurrentUser) -> Response:
        return JSONResponse(load_deployment(deployment_id))

    @app.post("/deployment/{deployment_id}/request")
    def deployment_request(request: Request, deployment_id: int, session: CurrentUser, action: FormText = "",
                           comment: FormText = "", csrf_token: FormText = "") -> Response:
        require_csrf(request, session, csrf_token)
        target = f"deployment:{deployment_id}"
        if action not in REQUESTS:
            record(request, session, "deployment-request", target, REFUSED, reason=f"unknown action {action[:40]!r}")
            raise HTTPException(400, f"Action {action[:40]!r}: one of {', '.join(REQUESTS)}.")
        require_role(request, session, OPERATOR, action, target)
        try:
            d = deployments.deployment(deployment_id)
        except StoreError:
            raise HTTPException(404, f"No deployment {deployment_id}.") from None
        user = session.user or ""
        detail: dict[str, Any] = {"sha256": d.sha256}
        if action == "confirm-first-layer":
            state = deployments.state(d.id)
            comment = comment.strip()[:MAX_CONFIRM_COMMENT_CHARS]
            problem = ("" if may_confirm_first_layer(d, state) else
                       f"Deployment {d.id} is a {d.stage} deployment in state {state}: only a first-layer "
                       "deployment that completed has a first layer to confirm.")
            if not problem:
                log = GateLog(store.path)
                with contextlib.closing(log.db):
                    try:
                        log.confirm_first_layer(d.sha256, user, comment)
                    except ValueError as exc:
                        problem = f"The gate refused the confirmation: {exc}"
            if problem:
                record(request, session, action, target, REFUSED, reason=problem, **detail)
                return render_deployment(request, session, d.id, error=problem, status_code=409)
            detail["comment"] = comment
        request_id = deployments.request(d.id, user, action)
        record(request, session, action, target, request_id=request_id, **detail)
        return RedirectResponse(f"/deployment/{d.id}?done={action}", status_code=303)

    @app.post("/deployment/{deployment_id}/label")
    def deployment_label(request: Request, deployment_id: int, session: CurrentUser, outcome: FormText = "",
                         failure_mode: FormText = "", note: FormText = "", csrf_token: FormText = "") -> Response:
        """A person's verdict on what a finished deployment printed (what the real-world dataset learns from)."""
        require_csrf(request, session, csrf_token)
        target = f"deployment:{deployment_id}"
        require_role(request, session, OPERATOR, "label", target)
        try:
            d = deployments.deployment(deployment_id)
        except StoreError:
            raise HTTPException(404, f"No deployment {deployment_id}.") from None
        state = deployments.state(d.id)
        problem = "" if state in FINISHED_STATES else (f"Deployment {d.id} is {state}: only a finished print "
                                                       "(complete, cancelled or error) can be labelled.")
        if not problem:
            try:
                deployments.label(d.id, session.user or "", outcome, failure_mode.strip()[:MAX_LABEL_CHARS],
                                  note.strip()[:MAX_LABEL_CHARS])
            except StoreError as exc:
                problem = str(exc)
        if problem:
            record(request, session, "label", target, REFUSED, reason=problem, sha256=d.sha256)
            return render_deployment(request, session, d.id, error=problem, status_code=409)
        record(request, session, "label", target, sha256=d.sha256, verdict=outcome)
        return RedirectResponse(f"/deployment/{d.id}?done=label", status_code=303)

    return app
